"""Site onboarding: the steps that make a site real, one file each, and their pipelines.

`spec.py` holds what a site is (validated input); each step module takes a SiteSpec and the
settings; `pipelines.py` puts them in DESIGN.md's order (record, files, nginx, dns,
certificate, operators, billing, health).
"""
