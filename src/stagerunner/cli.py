"""The command line: ``python -m stagerunner [command]`` (run is the default), migrate,
schema, enqueue, the operator commands (``admin``), the dashboard (``web``) and the
tutorial's counter demo.

Exit codes: 0 success; 1 the node stopped on a failure (restart limit, lost database
at start-up); 2 bad usage or configuration; 3 the schema is missing.

Imports stay inside functions: ``--help`` and a typo must not pay for pydantic and
psycopg, and each command imports only what it uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SCHEMA = 0, 1, 2, 3
# A node needs Linux: prctl (parent-death signal, child subreaper), pidfd_open, /proc.
LINUX_ONLY = ("run", "demo")
NOT_LINUX = ("stagerunner: a node runs on Linux only: it needs prctl (PR_SET_PDEATHSIG, "
             "PR_SET_CHILD_SUBREAPER), pidfd_open and /proc to own its processes; this is "
             "{platform}. The other commands (enqueue, status, migrate, ...) work here.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagerunner",
        description="PostgreSQL-backed job runner: every job in a killable child process "
                    "under a hard deadline. Configuration comes from STAGERUNNER_* variables.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 schema missing.")
    from stagerunner import __version__

    parser.add_argument("--version", action="version", version=f"stagerunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run a node: a producer and its consumers (the default)")
    sub.add_parser("migrate", help="install or update the schema (idempotent)")
    sub.add_parser("web", help="serve the dashboard (STAGERUNNER_WEB_HOST/PORT; needs the [web] extra)")
    sub.add_parser("schema", help="print schema.sql")
    hc = sub.add_parser("healthcheck", help="ask the local node's /healthz (exit 0 healthy, 1 not)")
    hc.add_argument("--ready", action="store_true", help="ask /readyz (connected) instead")
    hc.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    enq = sub.add_parser("enqueue", help="enqueue a task and print its id")
    enq.add_argument("name", help="registered task name, e.g. app.tasks:send_email")
    enq.add_argument("args", nargs="*", help="one JSON value per positional argument")
    enq.add_argument("--kwargs", help="keyword arguments as one JSON object")
    enq.add_argument("--queue")
    enq.add_argument("--priority", type=int)
    enq.add_argument("--max-attempts", type=int)
    enq.add_argument("--timeout", type=float, help="deadline in seconds (within the hard cap)")
    enq.add_argument("--in", dest="delay", type=float, metavar="SECONDS", help="run after a delay")
    enq.add_argument("--at", dest="run_at", metavar="ISO8601", help="run at a time")
    enq.add_argument("--unique-key")
    st = sub.add_parser("status", help="counts per status, nodes alive, oldest waiting age")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--watch", action="store_true", help="refresh until interrupted")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    st.add_argument("--count", type=int, help="with --watch: stop after N refreshes")
    ls = sub.add_parser("list", help="list tasks (filter by status, queue, name, age)")
    ls.add_argument("--status", choices=["waiting", "running", "success", "error", "timeout",
                                         "cancelled"])
    ls.add_argument("--queue")
    ls.add_argument("--name", help="task name; %% and _ are LIKE wildcards")
    ls.add_argument("--older-than", metavar="AGE", help="created before AGE ago (30s, 15m, 2h, 7d)")
    ls.add_argument("--newer-than", metavar="AGE", help="created within AGE")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one task: args, attempts, every error with its traceback")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="send failed or cancelled tasks back to waiting")
    retry.add_argument("ids", type=int, nargs="*")
    retry.add_argument("--failed", action="store_true", help="every task in error or timeout")
    retry.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel waiting tasks; kill running ones")
    cancel.add_argument("ids", type=int, nargs="+")
    cancel.add_argument("--json", action="store_true")
    purge = sub.add_parser("purge", help="delete finished tasks older than an age")
    purge.add_argument("--older-than", metavar="AGE", required=True, help="e.g. 7d, 12h, 30m")
    purge.add_argument("--json", action="store_true")
    for verb in ("pause", "resume"):
        q = sub.add_parser(verb, help=f"{verb} a queue on every node")
        q.add_argument("queue")
        q.add_argument("--json", action="store_true")
    demo = sub.add_parser("demo", help="the tutorial's counter producer and consumers")
    demo.add_argument("which", choices=["counter"])
    demo.add_argument("--consumers", type=int, default=2)
    demo.add_argument("--broadcast", action="store_true",
                      help="every consumer sees every event (BroadcastDispatcher)")
    demo.add_argument("--events", type=int, default=30, help="stop after N events (0: forever)")
    demo.add_argument("--start", type=int, default=0, help="the counter's initial state")
    demo.add_argument("--max-demand", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if (refused := refusal(command, sys.platform)) is not None:
        print(refused, file=sys.stderr)
        return EXIT_USAGE
    if command == "run":  # its consumers' runtime loads on the other core from now on
        from stagerunner import stageserver

        stageserver.start()
    from stagerunner import config, logs
    from stagerunner.errors import ConfigError, SchemaLocked, SchemaMissing, StagerunnerError

    try:
        settings = config.load(check_dsn=command != "run")  # run: see cmd_run
    except ConfigError as exc:
        print(f"stagerunner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level, settings.log_format, "main", settings.node_name)
    try:
        return _handler(command)(settings, args)
    except SchemaMissing as exc:
        print(f"stagerunner: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except SchemaLocked as exc:
        print(f"stagerunner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as exc:  # masked where it was raised: a second pass would cut it
        print(f"stagerunner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StagerunnerError, ValueError) as exc:
        print(f"stagerunner: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # a database error: a clean line, never a traceback with a DSN
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"stagerunner: database error: {logs.redact(str(exc).strip())}", file=sys.stderr)
        return EXIT_FAILED


def refusal(command: str, platform: str) -> str | None:
    """Why `command` cannot run on `platform`, or None: a node needs Linux, a client not."""
    if command in LINUX_ONLY and not platform.startswith("linux"):
        return NOT_LINUX.format(platform=platform)
    return None


def _handler(command: str) -> Callable[[Any, argparse.Namespace], int]:
    node: dict[str, Callable[[Any, argparse.Namespace], int]] = {
        "run": cmd_run, "migrate": cmd_migrate, "schema": cmd_schema, "enqueue": cmd_enqueue,
        "demo": cmd_demo, "web": cmd_web, "healthcheck": cmd_healthcheck}
    if command in node:
        return node[command]
    from stagerunner import admin  # the operator commands: a node does not pay for them

    return admin.COMMANDS[command]


def cmd_run(settings: Any, args: argparse.Namespace) -> int:
    import logging

    from stagerunner import logs, procs, registry, spawn, stages, stageserver  # no psycopg

    log = logging.getLogger("stagerunner.main")
    if not settings.task_modules:
        log.warning("STAGERUNNER_TASK_MODULES is empty: every task will end in error",
                    extra={"event": "node.no_task_modules"})
    log_derived_defaults(settings)
    try:
        names = registry.load(settings.task_modules)  # fail here, not in a restart loop
    except Exception as exc:
        print(f"stagerunner: STAGERUNNER_TASK_MODULES: cannot import: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    for spec in registry.over_cap(settings.task_modules, settings.max_job_timeout):
        print(f"stagerunner: task {spec.name} has timeout={spec.timeout:g} s, above "
              f"STAGERUNNER_MAX_JOB_TIMEOUT={settings.max_job_timeout:g} s: raise the cap or "
              "lower the task's timeout", file=sys.stderr)
        return EXIT_USAGE
    # (setproctitle took the room for titles, ours and the producer's, at our exec, before
    # the fork server's start swapped our environment: ``stageserver.start``)
    logs.set_title(f"stagerunner: supervisor node={settings.node_name}")
    # The consumers start now, forked by the fork server started at our exec; what is
    # left of their start (the task modules, the fork helper) overlaps ours below (psycopg
    # with the DSN's check, which still stops the node at boot, in ``open_database``; the
    # producer's side) and the schema check; the supervisor attaches them.
    stageserver.use(settings.process_library)
    launched = spawn.launch_consumers(procs.context(settings.process_library, "forkserver"),
                                      stages.consumer_configs(settings),
                                      settings.job_environment())
    try:
        return _run_node(settings, names, launched, log)
    finally:
        spawn.abandon(launched)  # those a failed start left unattached


def _run_node(settings: Any, names: list[str], launched: dict[int, Any], log: Any) -> int:
    import psycopg

    from stagerunner import catalog, database, migrations, registry, store, supervisor
    from stagerunner.logs import redact

    try:
        db = database.open_database(settings)
        with store.connect(db.dsn, connect_timeout=10) as conn:
            migrations.check_schema(conn)
            catalog.publish(conn, settings.node_name, registry.specs(settings.task_modules))
    except psycopg.OperationalError as exc:
        print(f"stagerunner: cannot connect to the database: {redact(str(exc).strip())}",
              file=sys.stderr)
        return EXIT_FAILED
    if db.embedded:
        log.info("using the embedded PostgreSQL", extra={
            "event": "db.embedded", "data_dir": str(settings.data_dir),
            # two fields, not one `PGPASSWORD=$(cat …) psql …` command: the log's secret
            # filter blanks whatever follows "password=" and left that one unusable
            "connect": f"psql '{db.server.public_dsn()}'",
            "password_file": str(db.server.password_file)})
    else:
        log.info("using PostgreSQL", extra={"event": "db.configured", "database": db.describe()})
    log.info("tasks registered", extra={"event": "node.tasks", "count": len(names),
                                        "tasks": ",".join(names)})
    return supervisor.Supervisor(settings, db.dsn, launched).run()


def log_derived_defaults(settings: Any) -> None:
    """Say where the consumer count came from when the user did not set it, and warn when
    the derived value was clamped into range (a default is never an error)."""
    import logging

    from stagerunner import config, cpus

    if "consumers" in settings.model_fields_set:
        return
    usable = cpus.usable_cpus()
    used, derived = config.derived_consumers(usable)
    log = logging.getLogger("stagerunner.main")
    extra = {"cpus": usable, "derived": derived, "used": used}
    if used != derived:
        log.warning("derived consumer default out of range; clamped",
                    extra={"event": "config.clamped", **extra})
    else:
        log.info("consumers from usable CPUs", extra={"event": "config.consumers", **extra})


def cmd_healthcheck(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner import health

    code, why = health.check(settings.metrics_host, settings.metrics_port, ready=args.ready,
                             timeout=args.timeout)
    print(f"stagerunner: {'healthy' if code == health.EXIT_HEALTHY else 'unhealthy'}: {why}",
          file=sys.stdout if code == health.EXIT_HEALTHY else sys.stderr)
    return code


def cmd_migrate(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner import database, migrations, store

    db = database.open_database(settings, install=False)
    with store.connect(db.dsn) as conn:
        migrations.install_schema(conn)
        version = migrations.check_schema(conn)
    print(f"schema version {version} installed in {db.describe()}")
    return EXIT_OK


def cmd_schema(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner import migrations

    sys.stdout.write(migrations.schema_text())
    return EXIT_OK


def cmd_enqueue(settings: Any, args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from stagerunner import arguments, client, database, migrations, registry, store
    from stagerunner.errors import NotJSON

    values = []
    for i, text in enumerate(args.args, 1):
        try:
            values.append(json.loads(text))
        except ValueError:
            raise NotJSON(f"argument {i} {text!r} is not JSON (quote strings: '\"{text}\"')") from None
    task_args: Any = values
    if args.kwargs is not None:
        try:
            task_args = json.loads(args.kwargs)
        except ValueError:
            raise NotJSON(f"--kwargs {args.kwargs!r} is not a JSON object") from None
        if not isinstance(task_args, dict):
            raise NotJSON("--kwargs takes one JSON object")
        try:
            task_args = arguments.pack(values, task_args)  # both: stored with "*args"
        except TypeError as exc:
            raise NotJSON(f"--kwargs: {exc}") from None
    registry.load(settings.task_modules)  # picks up the task's own defaults when listed
    options = {k: v for k, v in (("queue", args.queue), ("priority", args.priority),
                                 ("max_attempts", args.max_attempts), ("timeout", args.timeout),
                                 ("delay", args.delay), ("unique_key", args.unique_key))
               if v is not None}
    if args.run_at:
        options["run_at"] = datetime.fromisoformat(args.run_at)
    db = database.open_database(settings)
    with store.connect(db.dsn) as conn:
        migrations.check_schema(conn)
        print(client.enqueue(args.name, task_args, conn=conn, **options))
    return EXIT_OK


def cmd_web(settings: Any, args: argparse.Namespace) -> int:
    try:
        from stagerunner.web import server  # lazy: Jinja2 and the dashboard only for `web`
    except ModuleNotFoundError as exc:
        print(f"stagerunner: the dashboard needs {exc.name}: pip install 'stagerunner[web]'",
              file=sys.stderr)
        return EXIT_USAGE
    return server.serve(settings)


def cmd_demo(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner import demo

    return demo.run_counter(consumers=args.consumers, broadcast=args.broadcast,
                            events=args.events, start=args.start, max_demand=args.max_demand,
                            library=settings.process_library)
