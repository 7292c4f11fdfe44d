"""Shared helpers for the Python driver scripts run by tests/drivers.rs.

Connection details come from the environment:
PGTENANT_HOST, PGTENANT_PORT, PGTENANT_USER (e.g. app.acme),
PGTENANT_PASSWORD, PGTENANT_DB, and optionally PGTENANT_CLIENTS (how many
concurrent client connections) and PGTENANT_POOL_SIZE (the placement's
pool_size, so scripts can check that clients really share few servers).
"""

import asyncio
import os
import sys
import traceback


class CheckFailed(AssertionError):
    pass


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        fail(f"environment variable {name} is not set")
    return value


HOST = env("PGTENANT_HOST", "127.0.0.1")
PORT = int(env("PGTENANT_PORT", "6432"))
USER = env("PGTENANT_USER", "app.acme")
PASSWORD = env("PGTENANT_PASSWORD", "acme-secret")
DB = env("PGTENANT_DB", "acme")
CLIENTS = int(env("PGTENANT_CLIENTS", "30"))
POOL_SIZE = int(env("PGTENANT_POOL_SIZE", "4"))
# Overall budget for one script; tests/drivers.rs kills it a bit later.
BUDGET_S = float(env("PGTENANT_SCRIPT_BUDGET_S", "100"))


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    """Raises CheckFailed (reported with the script's name) unless cond."""
    if not cond:
        raise CheckFailed(msg)


def check_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


def item(i):
    """The seeded row `items` holds for id i (see tests/drivers.rs)."""
    return (i, f"item-{i}", i * 3)


# What each client is doing, reported if the script runs out of time.
phases = {}


def set_phase(client, phase):
    phases[client] = phase


def phase_summary():
    counts = {}
    for phase in phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    return ", ".join(f"{n} in {p}" for p, n in sorted(counts.items()))


def log(msg):
    print(msg, flush=True)


async def within(seconds, coro):
    """Awaits coro for at most `seconds`; True if it finished (its error,
    if any, is raised). Unlike asyncio.wait_for it does not cancel a late
    coroutine, whose driver may then block on cancelling its query."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return True
    return False


def run(driver, main):
    """Runs main() with the overall budget. Exits 0 on success, 1 with a
    clear message otherwise, at once (a stuck driver may not be cancellable)."""

    def failed(msg):
        sys.stdout.flush()
        print(f"FAILED ({driver}): {msg}", file=sys.stderr, flush=True)
        os._exit(1)

    async def guarded():
        try:
            if not await within(BUDGET_S, main()):
                failed(f"did not finish within {BUDGET_S}s; clients: {phase_summary()}")
        except CheckFailed as e:
            failed(str(e))
        except Exception as e:
            traceback.print_exc()
            failed(f"{type(e).__name__}: {e}")

    asyncio.run(guarded())
    sys.stdout.flush()
    os._exit(0)
