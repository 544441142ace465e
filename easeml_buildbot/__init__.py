"""easeml-buildbot: continuous integration for ML models with statistical guarantees.

The estimator core (``easeml_buildbot.estimator``) and custody code import neither
Buildbot nor Twisted; the Buildbot side lives in ``easeml_buildbot.master``.
"""

__version__ = "0.1.0"
