"""Deployment targets, one module each, and the registry that every command consults.

``ulffn_deploy.targets.registry`` lists them, maps artifact files to them, builds and loads artifacts, and
picks a folder's default artifact. Importing this package imports no target.
"""
