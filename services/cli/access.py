"""``hounsfield tokens``: the registry's API tokens (shown once when made; only their hash is kept)."""

from __future__ import annotations

from typing import Annotated

import typer

from hounsfield.cli._common import ConfigOption, cli_principal, database, err

__all__ = ["tokens"]

tokens = typer.Typer(help="API tokens of the registry (shown once when made; only their hash is kept).")


@tokens.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what will use it (unique).")],
    role: Annotated[str, typer.Option(help="viewer, radiologist, model-developer, admin or sender.")] = "viewer",
    config: ConfigOption = None,
) -> None:
    """Make an API token and print it (the only time it is shown)."""
    from hounsfield.access import Role, create_token
    from hounsfield.errors import Conflict

    try:
        chosen = Role(role)
    except ValueError:
        err.print(f"[red]unknown role {role!r}: one of {', '.join(r.value for r in Role)}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _, db = database(config)
    try:
        with db.session() as session:
            _, token = create_token(session, cli_principal(), name, chosen)
    except Conflict as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    typer.echo(token)


@tokens.command("list")
def tokens_list(config: ConfigOption = None) -> None:
    """The API tokens (never the tokens themselves)."""
    from hounsfield.db.access import list_tokens

    _, db = database(config)
    with db.session() as session:
        for row in list_tokens(session):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            typer.echo(f"{row.id}\t{row.name}\t{row.role}\t{state}")
    db.dispose()


@tokens.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (tokens list).")], config: ConfigOption = None
) -> None:
    """Revoke an API token at once."""
    from hounsfield.access import revoke_token

    _, db = database(config)
    with db.session() as session:
        revoked = revoke_token(session, cli_principal(), token_id)
    db.dispose()
    if not revoked:
        err.print(f"[red]no active token with id {token_id}[/red]", highlight=False)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}")
