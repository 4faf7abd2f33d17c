"""Reporting: tables, figures and the benchmark table, built from result files only.
Imports the base modules and nothing else of the suite."""
