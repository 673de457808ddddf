"""``user``: the web console's users (dicom_chain/users.py). Each change is an event."""

from __future__ import annotations

import sys
from typing import Any

import click

from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options


@click.group("user")
def user_group() -> None:
    """Who may log in to the web console (serve --http-port), and in which role."""


@user_group.command("add")
@config_option
@settings_options(*NODE)
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["administrator", "compliance", "radiologist"]),
    help="administrator: everything; compliance: audit, sharing, patient links; radiologist: studies.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (scripts).")
def user_add(name: str, role: str, password_stdin: bool, **kwargs: Any) -> None:
    """Add a user (the password is asked for, twice, unless --password-stdin)."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.users import Users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    node = Node.open(settings_from(kwargs))
    try:
        made = Users(node.ledger, node.key).add(name, role, password, actor=str(local_user()))
    finally:
        node.close()
    click.echo(f"added {made.name} as {made.role}")


@user_group.command("disable")
@config_option
@settings_options(*NODE)
@click.argument("name")
def user_disable(name: str, **kwargs: Any) -> None:
    """Stop a user logging in (the name stays: events name users)."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.users import Users

    node = Node.open(settings_from(kwargs))
    try:
        Users(node.ledger, node.key).disable(name, actor=str(local_user()))
    finally:
        node.close()
    click.echo(f"disabled {name}")


@user_group.command("list")
@config_option
@settings_options(*NODE)
def user_list(**kwargs: Any) -> None:
    """The users, their roles, and whether they may log in."""
    from dicom_chain.node import Node
    from dicom_chain.users import Users

    node = Node.open(settings_from(kwargs))
    try:
        for u in Users(node.ledger, node.key).all():
            state = f"disabled {u.disabled_at}" if u.disabled_at else "active"
            click.echo(f"{u.name}  {u.role}  {state}  (added {u.created_at})")
    finally:
        node.close()
