"""Prefect layer: thin tasks and flows around tinymlops library functions (the library never imports Prefect)."""

from tinymlops.settings import prepare_environment

prepare_environment()
