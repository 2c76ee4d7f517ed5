"""Start and stop the embedded local stack: SecantusDB (MongoDB wire protocol) and PostgreSQL 15.

Everything lives under one state folder (`.local/` by default). `down` stops exactly the
processes `up` started, by the PIDs recorded in `state.json`. PostgreSQL refuses to run as
root, so as root the server runs as the unprivileged user `etlsync`, created on demand;
when that user cannot reach the state folder (a clone in root's home or in a `mktemp -d`
folder), PostgreSQL's files go to a folder of their own under /var/tmp, recorded in
`state.json` and removed by `clean`.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import yaml
from pymongo import MongoClient

#: SecantusDB's server, started with the interpreter this runs on (see the module for why not `secantusd-py`).
SECANTUS_SERVER = Path(__file__).with_name("secantus_server.py")
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_RUN_USER = "etlsync"
#: Where PostgreSQL's files go when PG_RUN_USER cannot reach the state folder.
PG_FALLBACK_PARENT = Path("/var/tmp")
PG_SUPERUSER = "shop"
MAX_SLOT_WAL_KEEP_SIZE = "1GB"
CART_DB = "cart"
DAGSTER_DB = "dagster"
PRODUCT_DB = "product"
ORDER_DB = "order"


#: The Dagster instance's settings the daemon and the webserver read (copied into DAGSTER_HOME).
DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def launch_deadline_s() -> int:
    """How long the daemon waits for the code server to launch a run: dagster.yaml's start timeout, in Dagster's
    DAGSTER_GRPC_TIMEOUT_SECONDS (60 s by default; it bounds every call of the daemon to the code server). A run then
    has the whole start timeout to start, its launch included: on a busy machine the code server's start of a run
    worker took over 60 s, and Dagster's run queue failed the run at launch instead of waiting for it."""
    return int(yaml.safe_load(DAGSTER_YAML.read_text())["run_monitoring"]["start_timeout_seconds"])


class StackError(RuntimeError):
    """The local stack could not be started or stopped."""


#: How many ports below the kernel's ephemeral range `free_port` picks from.
FREE_PORT_SPAN = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (32768 unless configured)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _reserve(port: int, folder: Path) -> bool:
    """Mark `port` as this process's in `folder`; False when a live process holds it already."""
    mark = folder / str(port)
    for _ in range(2):
        try:
            fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            try:
                holder = int(mark.read_text() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder == os.getpid() or _pid_alive(holder):
                return False
            mark.unlink(missing_ok=True)  # its process is gone: the port is free to take
            continue
        with os.fdopen(fd, "w") as out:
            out.write(str(os.getpid()))
        if not _RESERVED:
            atexit.register(_release_reserved, os.getpid())
        _RESERVED.append(mark)
        return True
    return False


#: The marks `_reserve` made in this process.
_RESERVED: list[Path] = []


def _release_reserved(pid: int) -> None:
    """Remove this process's port marks at its exit (a forked child inherits the hook, not the ports)."""
    if os.getpid() == pid:
        for mark in _RESERVED:
            mark.unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on and no other process of ours was given.

    Picked at random below the kernel's ephemeral range, so no outgoing connection's own port
    is ever one of them, and reserved for this process's lifetime by a mark in a folder every
    process of this user shares: a port handed out here but not bound yet (a test session
    chooses its servers' ports long before it starts them) is never handed out again meanwhile.
    """
    low = _ephemeral_low()
    span = range(max(1024, low - FREE_PORT_SPAN), low)
    candidates = random.sample(span, len(span))
    folder = Path(tempfile.gettempdir()) / f"etl-sync-ports-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    for port in candidates:
        if not _reserve(port, folder):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone else's: keep the mark, so it is not tried again
        return port
    raise StackError(f"no free port from {span.start} to {span.stop - 1}")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait for `pid` to exit; SIGKILL it after `timeout` seconds; raise if even that fails."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _pid_alive(pid):
        raise StackError(f"process {pid} is still running after SIGKILL")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def process_cmdline(pid: int) -> str:
    """The command line of process `pid`, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _runs_ours(pid: int | None, marker: Path) -> bool:
    """Whether `pid` is alive and still the server we started (its command line names `marker`).

    A recorded PID can belong to another process after a reboot; that one is never signalled.
    """
    return _pid_alive(pid) and str(marker) in process_cmdline(pid)  # type: ignore[arg-type]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_free_or_fail(port: int, what: str, setting: str) -> None:
    if listening(port):
        raise StackError(
            f"{what} cannot start: 127.0.0.1:{port} is already in use "
            f"(another local stack? choose a port with {setting})"
        )


def _wait_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise StackError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f}s; log:\n{tail}")


@dataclass
class StackState:
    """What `up` started: ports and PIDs, persisted in `state.json`."""

    mongo_port: int
    pg_port: int
    pg_password: str
    mongo_user: str | None = None  # set: SecantusDB runs with --auth and this root user
    mongo_password: str | None = None
    mongo_pid: int | None = None
    pg_pid: int | None = None
    pg_dir: str | None = None  # the folder holding pgdata/ and pglog/ (the state folder unless root needs another)
    wal_level: str = "logical"  # cart_changes_sensor needs logical; a test starts a `replica` server too


class LocalStack:
    """The local MongoDB and PostgreSQL servers under one state folder."""

    def __init__(
        self,
        state_dir: Path,
        mongo_port: int,
        pg_port: int,
        pg_password: str,
        mongo_user: str | None = None,
        mongo_password: str | None = None,
        wal_level: str = "logical",
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.state = StackState(
            mongo_port=mongo_port,
            pg_port=pg_port,
            pg_password=pg_password,
            mongo_user=mongo_user,
            mongo_password=mongo_password,
            wal_level=wal_level,
        )
        saved = self._load()
        if saved is not None:
            self.state = saved

    # ----- persisted state -----
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load(self) -> StackState | None:
        if not self._state_file.exists():
            return None
        saved = json.loads(self._state_file.read_text())
        # Fields this version no longer has (a state folder of an older checkout) are dropped.
        return StackState(**{name: value for name, value in saved.items() if name in StackState.__dataclass_fields__})

    def _save(self) -> None:
        self._state_file.write_text(json.dumps(asdict(self.state), indent=2))
        self._state_file.chmod(0o600)

    # ----- URLs -----
    def mongo_url(self, db: str) -> str:
        return f"mongodb://127.0.0.1:{self.state.mongo_port}/{db}"

    def mongo_client(self, **options: object) -> MongoClient:
        """A client for the stack's MongoDB, authenticated when the stack uses auth."""
        if self.state.mongo_user:
            options = {
                "username": self.state.mongo_user,
                "password": self.state.mongo_password,
                "authSource": "admin",
                **options,
            }
        return MongoClient(self.mongo_url("admin"), **options)

    def pg_url(self, db: str, scheme: str = "postgresql") -> str:
        password = quote(self.state.pg_password, safe="")
        return f"{scheme}://{PG_SUPERUSER}:{password}@127.0.0.1:{self.state.pg_port}/{db}"

    def env(self) -> dict[str, str]:
        """The service's environment variables pointing at this stack."""
        return {
            "PRODUCT_SERVICE_MONGODB_URL": self.mongo_url(PRODUCT_DB),
            "ORDER_SERVICE_MONGODB_URL": self.mongo_url(ORDER_DB),
            "CART_DB_URL": self.pg_url(CART_DB),
            "DAGSTER_PG_URL": self.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
            # SecantusDB projects in Python: it sends whole documents faster (README, Performance).
            "MONGODB_PROJECT_FIELDS": "false",
            "DAGSTER_GRPC_TIMEOUT_SECONDS": os.environ.get("DAGSTER_GRPC_TIMEOUT_SECONDS", str(launch_deadline_s())),
            **(
                {"MONGO_USER": self.state.mongo_user, "MONGO_PASSWORD": self.state.mongo_password or ""}
                if self.state.mongo_user
                else {}
            ),
        }

    # ----- lifecycle -----
    @property
    def recorded(self) -> bool:
        """Whether a stack was ever started in this state folder (`state.json` exists)."""
        return self._state_file.exists()

    def up(self) -> None:
        """Start both servers (those not already running) and record their PIDs.

        When a server fails to start, the ones this call started are stopped again.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)  # the unprivileged PostgreSQL user must traverse it
        started: list[Callable[[], None]] = []
        try:
            if not self.mongo_running:
                self.state.mongo_pid = self._start_mongo()
                started.append(lambda: self.stop_mongo(signal.SIGTERM))
                self._save()
            if self.pg_running and self._running_wal_level() != self.state.wal_level:
                # Started by an older checkout, before change capture: restart it with logical decoding.
                print(f"restarting PostgreSQL with wal_level={self.state.wal_level} (for cart_changes_sensor)")
                self.stop_postgres()
            if not self.pg_running:
                self.state.pg_pid = self._start_postgres()
                started.append(self.stop_postgres)
                self._save()
            self._create_databases()
        except BaseException:
            for stop in reversed(started):
                stop()
            raise

    @property
    def mongo_running(self) -> bool:
        return _runs_ours(self.state.mongo_pid, self.state_dir / "mongo")

    @property
    def pg_running(self) -> bool:
        return _runs_ours(self.state.pg_pid, self._pg_data)

    def down(self) -> None:
        """Stop the processes `up` started (by PID) and wait for them to exit; raise if one will not."""
        running = [
            (pid, mode)
            for pid, mode, alive in (
                (self.state.pg_pid, signal.SIGINT, self.pg_running),  # SIGINT: PostgreSQL's "fast" shutdown
                (self.state.mongo_pid, signal.SIGTERM, self.mongo_running),
            )
            if alive
        ]
        for pid, mode in running:
            os.kill(pid, mode)  # type: ignore[arg-type]
        for pid, _ in running:
            _wait_exit(pid, 30)  # type: ignore[arg-type]
        self.state.pg_pid = self.state.mongo_pid = None
        if self.recorded:
            self._save()

    def clean(self) -> None:
        """Stop the stack and delete its state folder and PostgreSQL's folder."""
        self.down()
        for folder in {self.state_dir, self._pg_root}:
            shutil.rmtree(folder, ignore_errors=True)

    def status(self) -> dict[str, str]:
        """Each server's PID and whether it is running."""
        return {
            "mongodb": f"pid {self.state.mongo_pid} on 127.0.0.1:{self.state.mongo_port} "
            + ("running" if self.mongo_running else "stopped"),
            "postgresql": f"pid {self.state.pg_pid} on 127.0.0.1:{self.state.pg_port} "
            + ("running" if self.pg_running else "stopped")
            + ("" if self._pg_root == self.state_dir else f", files in {self._pg_root}"),
        }

    # Individual stop/start, for fault tests and the health sensor's demo.
    def stop_mongo(self, mode: signal.Signals = signal.SIGKILL) -> None:
        """Stop SecantusDB: a crash by default; SIGTERM is a clean shutdown that flushes its writes."""
        if self.mongo_running:
            os.kill(self.state.mongo_pid, mode)  # type: ignore[arg-type]
            _wait_exit(self.state.mongo_pid, 30)  # type: ignore[arg-type]
        self.state.mongo_pid = None
        self._save()

    def start_mongo(self) -> None:
        self.state.mongo_pid = self._start_mongo()
        self._save()

    def stop_postgres(self, mode: signal.Signals = signal.SIGINT) -> None:
        if self.pg_running:
            os.kill(self.state.pg_pid, mode)  # type: ignore[arg-type]
            _wait_exit(self.state.pg_pid, 30)  # type: ignore[arg-type]
        self.state.pg_pid = None
        self._save()

    def start_postgres(self) -> None:
        self.state.pg_pid = self._start_postgres()
        self._save()

    # ----- MongoDB (SecantusDB) -----
    def _start_mongo(self) -> int:
        data = self.state_dir / "mongo"
        data.mkdir(exist_ok=True)
        auth_ready = data / "auth-user-created"
        if self.state.mongo_user and not auth_ready.exists():
            # SecantusDB, like mongod, takes its first user on a server started without --auth.
            setup = self._spawn_mongo(auth=False)
            client = MongoClient(self.mongo_url("admin"), serverSelectionTimeoutMS=30_000)
            try:
                client.admin.command(
                    "createUser",
                    self.state.mongo_user,
                    pwd=self.state.mongo_password,
                    roles=[{"role": "root", "db": "admin"}],
                )
                client.admin.command("fsync")  # the user must survive even a hard stop below
            finally:
                client.close()
            setup.terminate()
            try:
                setup.wait(timeout=60)
            except subprocess.TimeoutExpired:  # seen on a heavily loaded machine
                setup.kill()
                setup.wait(timeout=30)
            auth_ready.touch()
        return self._spawn_mongo(auth=bool(self.state.mongo_user)).pid

    def _spawn_mongo(self, auth: bool) -> subprocess.Popen:
        _port_free_or_fail(self.state.mongo_port, "SecantusDB", "LOCAL_MONGO_PORT")
        if importlib.util.find_spec("secantus") is None:
            raise StackError("SecantusDB (secantusd-py) not found: install the project with its 'local' extra")
        log = self.state_dir / "mongo.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(SECANTUS_SERVER),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.state.mongo_port),
                    "--storage-path",
                    str(self.state_dir / "mongo"),
                    "--log-level",
                    "WARNING",
                    *(["--auth"] if auth else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,
            )
        _wait_port(self.state.mongo_port, 60, "SecantusDB", log)
        client = (
            self.mongo_client(serverSelectionTimeoutMS=30_000)
            if auth
            else MongoClient(self.mongo_url("admin"), serverSelectionTimeoutMS=30_000)
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()
        return proc

    # ----- PostgreSQL -----
    def _as_pg_user(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        deadline = time.monotonic() + 30
        while not _user_exists(PG_RUN_USER):
            # Stacks starting side by side (parallel test workers) may race to create the user: one of them
            # creates it while the others fail on the existing user or on /etc/passwd's lock, and look again.
            created = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_RUN_USER],
                capture_output=True,
                text=True,
            )
            if created.returncode != 0 and not _user_exists(PG_RUN_USER):
                if time.monotonic() > deadline:
                    raise StackError(f"could not create the PostgreSQL user {PG_RUN_USER!r}: {created.stderr}")
                time.sleep(0.2)
        return {"user": PG_RUN_USER, "group": PG_RUN_USER, "extra_groups": []}

    @property
    def _pg_root(self) -> Path:
        return Path(self.state.pg_dir) if self.state.pg_dir else self.state_dir

    @property
    def _pg_data(self) -> Path:
        return self._pg_root / "pgdata"

    def _pg_user_can_reach(self, folder: Path) -> bool:
        return subprocess.run(["test", "-x", str(folder)], user=PG_RUN_USER, capture_output=True).returncode == 0

    def _choose_pg_dir(self) -> None:
        """As root, keep PostgreSQL's files where PG_RUN_USER can reach them (recorded in `state.json`)."""
        if self.state.pg_dir or os.geteuid() != 0 or self._pg_user_can_reach(self.state_dir):
            return
        folder = Path(tempfile.mkdtemp(prefix="etl-sync-pg-", dir=PG_FALLBACK_PARENT))
        folder.chmod(0o755)
        if not self._pg_user_can_reach(folder):
            raise StackError(f"the PostgreSQL user {PG_RUN_USER!r} can reach neither {self.state_dir} nor {folder}")
        self.state.pg_dir = str(folder)
        self._save()

    def _chown_to_pg_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, PG_RUN_USER, PG_RUN_USER)

    def _start_postgres(self) -> int:
        run_as = self._as_pg_user()
        self._choose_pg_dir()
        data = self._pg_data
        logs = self._pg_root / "pglog"
        for folder in (data, logs):
            folder.mkdir(exist_ok=True, mode=0o700)
            self._chown_to_pg_user(folder)
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if not (data / "PG_VERSION").exists():
            pwfile = logs / "pwfile"
            pwfile.write_text(self.state.pg_password + "\n")
            self._chown_to_pg_user(pwfile)
            result = subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    PG_SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
                env=env,
                **run_as,
            )
            pwfile.unlink()
            if result.returncode != 0:
                raise StackError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        _port_free_or_fail(self.state.pg_port, "PostgreSQL", "LOCAL_PG_PORT")
        log = logs / "postgres.log"
        options = (
            f"-p {self.state.pg_port} -k {data} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200 "
            # Logical decoding, for cart_changes_sensor. synchronous_commit stays on: decoding gives only
            # flushed WAL, so a commit must be flushed to be seen (with fsync off, that costs nothing).
            f"-c wal_level={self.state.wal_level}"
        )
        result = subprocess.run(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            capture_output=True,
            text=True,
            env=env,
            **run_as,
        )
        if result.returncode != 0:
            # pg_ctl gave up waiting; a postmaster still starting must not outlive the failed `up`.
            subprocess.run(
                [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                env=env,
                **run_as,
            )
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"PostgreSQL did not start:\n{result.stdout}\n{result.stderr}\n{tail}")
        return int((data / "postmaster.pid").read_text().splitlines()[0])

    def _running_wal_level(self) -> str | None:
        try:
            with psycopg.connect(self.pg_url("postgres"), connect_timeout=10) as conn:
                return conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
        except psycopg.OperationalError:
            return None  # not answering yet: nothing to compare

    def _create_databases(self) -> None:
        with psycopg.connect(self.pg_url("postgres"), autocommit=True, connect_timeout=10) as conn:
            # A slot nobody reads keeps at most this much WAL, then is lost (set here, not on the command
            # line, so that ALTER SYSTEM can change it).
            conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{MAX_SLOT_WAL_KEEP_SIZE}'")
            conn.execute("SELECT pg_reload_conf()")
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in (CART_DB, DAGSTER_DB):
                if name not in existing:
                    conn.execute(f'CREATE DATABASE "{name}"')


DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / ".local"


def stack_from_env() -> LocalStack:
    """The stack configured by the LOCAL_* variables (state folder, ports, passwords, MongoDB user)."""
    return LocalStack(
        Path(os.environ.get("LOCAL_STATE_DIR", DEFAULT_STATE_DIR)),
        mongo_port=int(os.environ.get("LOCAL_MONGO_PORT", "27117")),
        pg_port=int(os.environ.get("LOCAL_PG_PORT", "55432")),
        pg_password=os.environ.get("LOCAL_PG_PASSWORD", "local-dev-only"),
        mongo_user=os.environ.get("LOCAL_MONGO_USER") or None,
        mongo_password=os.environ.get("LOCAL_MONGO_PASSWORD") or None,
    )
