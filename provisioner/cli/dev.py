"""`provision dev up|down|status|env`: the real local stack for the demo and the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from provisioner.devstack.stack import DevStack

EXIT_NOT_RUNNING = 1
EXIT_ERROR = 2


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"error: {' '.join(str(exc).split())}", err=True)
    raise SystemExit(EXIT_ERROR)


def _stack(ctx: click.Context) -> DevStack:
    """The stack named by --state-dir, or the one under the settings' state folder."""
    from provisioner.config import ConfigError
    from provisioner.devstack.stack import DevStack

    found = ctx.find_object(DevStack)
    if found is not None:
        return found
    try:
        return DevStack.default()
    except ConfigError as exc:
        _fail(exc)


def _guarded(action: Callable[[], Any]) -> Any:
    """Run a stack operation, turning a DevStackError into its message and exit status 2."""
    from provisioner.devstack.errors import DevStackError

    try:
        return action()
    except DevStackError as exc:
        _fail(exc)


def _print_table(stack: DevStack) -> bool:
    """One line per component; True when all of them run."""
    rows = stack.status()
    width = max(len(row.name) for row in rows)
    for row in rows:
        mark = "up  " if row.running else "DOWN"
        pid = str(row.pid) if row.pid else "-"
        click.echo(f"{row.name:<{width}}  {mark}  pid {pid:<7}  {row.endpoint}")
        if not row.running:
            click.echo(f"{'':<{width}}        {row.detail}")
    return all(row.running for row in rows)


@click.group(name="dev")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the stack's state (default: <state_dir>/stack, var/stack in a checkout).",
)
@click.pass_context
def dev(ctx: click.Context, state_dir: Path | None) -> None:
    """Start, stop and inspect the local stack (PostgreSQL, nginx, pebble, moto) on loopback."""
    if state_dir is not None:
        from provisioner.devstack.stack import DevStack

        ctx.obj = DevStack(state_dir)


@dev.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start what is not running (idempotent) and print the endpoints."""
    stack = _stack(ctx)
    _guarded(stack.up)
    _print_table(stack)
    click.echo(f'env file: {stack.env_file}  (source it, or: eval "$(provision dev env)")')


@dev.command()
@click.option("--purge", is_flag=True, help="Also delete the stack's state and database files.")
@click.pass_context
def down(ctx: click.Context, purge: bool) -> None:
    """Stop what `up` started, by its PID files."""
    stack = _stack(ctx)
    stopped = _guarded(stack.purge if purge else stack.down)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        click.echo(f"deleted {stack.state_dir}")


@dev.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show each component; exit 1 when any is not running."""
    if not _guarded(lambda: _print_table(_stack(ctx))):
        raise SystemExit(EXIT_NOT_RUNNING)


@dev.command()
@click.pass_context
def env(ctx: click.Context) -> None:
    """Print `export` lines for the stack: eval "$(provision dev env)"."""
    from provisioner.devstack.stack import render_exports

    click.echo(render_exports(_guarded(_stack(ctx).env)), nl=False)


@dev.command(name="generate-data")
@click.option(
    "--customers",
    type=click.IntRange(0, 100_000_000),
    required=True,
    help="Customers to make; operators, sites, messages... follow in proportion.",
)
@click.option(
    "--seed", type=click.IntRange(0), default=1, show_default=True, help="Same seed, same bytes."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Application root to create (data/, agents/data/); must not hold them already.",
)
@click.option(
    "--bcrypt-cost",
    type=click.IntRange(4, 14),
    default=10,
    show_default=True,
    help="Cost of the eight password hashes (AEIMS uses 12).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def generate_data(customers: int, seed: int, out: Path, bcrypt_cost: int, as_json: bool) -> None:
    """Write AEIMS-shaped JSON files at any scale, with the real files' quirks, for tests and
    benchmarks. Account number n has the password aeims-dev-<n mod 8>."""
    import json

    from provisioner.devdata.aeims_generator import generate

    try:
        dataset = generate(out, customers, seed, bcrypt_rounds=bcrypt_cost)
    except (ValueError, OSError) as exc:
        _fail(exc)
    summary = dataset.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"wrote {dataset.scale.total:,} records in {summary['files']} files "
        f"({summary['bytes'] / 1e6:.1f} MB) under {out} in {summary['seconds']:.1f} s (seed {seed})"
    )
    for entity, count in summary["counts"].items():
        click.echo(f"  {entity:<22}{count:>12,}")
    sample = ", ".join(login for login, _ in dataset.customer_logins(3))
    click.echo(f"passwords: {summary['passwords']}; customers that log in: {sample}, ...")


if __name__ == "__main__":
    dev()
