"""``easeml demo``: the whole service on one machine, no GitHub, no outside SMTP.

It makes throwaway service keys, a git repository with a real scikit-learn model (its
weights exported to numpy, applied by the scaffold's ``predict.py``) and a real encrypted
test set, starts a local SMTP server that files every mail in a folder, a Buildbot master
(SQLite, ``forge = "local"``: Buildbot's GitPoller on that repository) and a worker from
the repository's own ``master/`` and ``worker/`` templates, then commits a better, a worse
and a broken model and reports what the service decided for each.

Entry point: ``easeml_buildbot.demo.run.run_demo(DemoOptions(...))``.
"""
