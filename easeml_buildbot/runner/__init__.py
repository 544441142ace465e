"""Running the model under test and scoring it (no Buildbot, no Twisted here).

``base`` holds the contract (limits, results, errors), ``docker_runner`` the sandbox,
``process_runner`` a local subprocess (not a sandbox), ``workspace`` the run directory
(features copy, output), ``predictions`` the parsing of what a model wrote, ``evaluate`` the
worker-side evaluation of a pull request and ``cli`` the ``easeml worker`` commands the
master's build steps run. The contract for data scientists: docs/model-contract.md.
"""
