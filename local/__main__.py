"""`python -m local up|seed|report|status|down|clean`: the embedded local stack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from local.demo_data import seed_carts, seed_products
from local.report import drift_report
from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack, StackError, listening, stack_from_env


def write_env_file(stack: LocalStack) -> Path:
    """`.local/stack.env`: the variables `make demo` and `make ui` export."""
    dagster_home = stack.state_dir / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    instance_yaml = dagster_home / "dagster.yaml"
    repo_yaml = Path(__file__).resolve().parent.parent / "dagster.yaml"
    instance_yaml.write_text(repo_yaml.read_text())
    env = {**stack.env(), "DAGSTER_HOME": str(dagster_home)}
    path = stack.state_dir / "stack.env"
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
    path.chmod(0o600)
    return path


def prepare_schema(stack: LocalStack) -> None:
    """The Cart tables and the Order indexes."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        create_cart_schema(conn)
    client = stack.mongo_client()
    try:
        create_order_indexes(client[ORDER_DB])
    finally:
        client.close()


def seed(stack: LocalStack) -> None:
    client = stack.mongo_client()
    try:
        with psycopg.connect(stack.pg_url(CART_DB)) as conn:
            counts = seed_products(client[PRODUCT_DB], conn)
            carts = seed_carts(conn, client[ORDER_DB], stale_product_ids=counts.stale_ids)
    finally:
        client.close()
    print(
        f"seeded {counts.products} products (+{counts.malformed} malformed documents); "
        f"the Cart DB lacks {counts.missing_in_cart_db} and has {counts.stale_in_cart_db} stale"
    )
    print(
        f"seeded {carts.carts} carts ({carts.demo_user_carts} of demo-user-1, {carts.unsyncable} unsyncable); "
        f"the Order DB lacks {carts.missing_in_order_db}, has {carts.outdated_in_order_db} outdated, "
        f"{carts.stale_in_order_db} with a stale product price, {carts.newer_in_order_db} newer "
        f"and {carts.orphaned_in_order_db} orphaned; {carts.stale_after_product_sync} more carts hold a product "
        f"the product sync updates, so after it the cart sync finds "
        f"{carts.stale_in_order_db + carts.stale_after_product_sync} changed"
    )


def stop(stack: LocalStack, delete: bool) -> None:
    """Stop the servers recorded in the state folder (`delete`: and remove its files).

    It never reports a server stopped that still runs (`LocalStack.down` waits for each to
    exit), and it says when a stack port answers for a server this folder did not start.
    """
    if stack.recorded:
        pids = {
            "mongodb": stack.state.mongo_pid if stack.mongo_running else None,
            "postgresql": stack.state.pg_pid if stack.pg_running else None,
        }
        if delete:
            stack.clean()
        else:
            stack.down()
        for name, pid in pids.items():
            print(f"{name}: {f'pid {pid} stopped' if pid else 'was not running'}")
        print(f"local stack in {stack.state_dir} stopped{' and deleted' if delete else ''}")
    else:
        print(f"no local stack is recorded in {stack.state_dir}: nothing to stop")
        if delete:
            stack.clean()
    for name, port in (("MongoDB", stack.state.mongo_port), ("PostgreSQL", stack.state.pg_port)):
        if listening(port):
            print(
                f"note: 127.0.0.1:{port}, the {name} port, still answers: a server this state folder did not "
                "start (was it started with another LOCAL_STATE_DIR?)",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__)
    parser.add_argument("command", choices=["up", "seed", "report", "status", "down", "clean"])
    args = parser.parse_args(argv)
    stack = stack_from_env()
    try:
        match args.command:
            case "up":
                stack.up()
                prepare_schema(stack)
                env_file = write_env_file(stack)
                for name, state in stack.status().items():
                    print(f"{name}: {state}")
                print(f"environment: {env_file}")
            case "seed":
                seed(stack)
            case "down" | "clean":
                stop(stack, delete=args.command == "clean")
            case "status":
                for name, state in stack.status().items():
                    print(f"{name}: {state}")
            case "report":
                print(drift_report(stack))
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
