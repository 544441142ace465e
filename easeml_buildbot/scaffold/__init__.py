"""Scaffolding for model repositories: ``easeml init`` and ``easeml run-local``.

The templates are package data (``templates/``) so that what ``easeml init`` writes is the
same file the tests check and the demo uses.
"""

from easeml_buildbot.scaffold.init import ScaffoldError, ScaffoldResult, TEMPLATE_FILES, scaffold

__all__ = ["ScaffoldError", "ScaffoldResult", "TEMPLATE_FILES", "scaffold"]

