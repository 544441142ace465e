"""Reusable test helpers (real servers started on loopback, sample repositories, keys).

Importable from any test as ``support.<module>`` (pytest's ``pythonpath`` includes tests/).
"""
