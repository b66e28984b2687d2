"""PLACEHOLDER: replaced by the implementation of this command."""

import click

from ulffn_deploy.errors import UlffnError


@click.command(name="calibrate")
def command() -> None:
    """(not implemented yet)"""
    raise UlffnError("this command is not implemented yet")
