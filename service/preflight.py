"""What `geofence serve` checks before it starts any child process.

A value that passes the config's types but cannot work (a port out of range, a layer file
that does not load, a CURVE directory without keys, a storage path that cannot be
written) would otherwise surface as a child crash-looping behind a supervisor that never
becomes ready. Here each becomes one line, all of them at once, and `serve` exits
non-zero without starting anything. Checks that need the engine's files (`paths`) take
them; the store files are checked for damage once the rest passed, and
`check_worker_count` runs last because it may retire evaluation files.
"""

import os

from engine import config
from engine.config import ConfigError, Settings
from engine.paths import EnginePaths
from engine.store_check import refuse_damaged_stores
from geofence.errors import GeofenceError
from service.startup import one_line


class StartError(GeofenceError, RuntimeError):
    """The engine cannot start (`problems`, one line each: a file, a directory, a port, a
    child that failed the same way three times); fix it and start again."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def preflight(settings: Settings, workers: int = 1, insecure: bool = False) -> EnginePaths:
    """The engine's paths once everything a child needs has been checked; else ConfigError
    (out-of-range keys) or StartError, listing every problem."""
    problems = config.check(settings)
    if problems:
        raise ConfigError(problems)
    paths = check_storage(settings)
    problems = []
    for check in (lambda: check_bind(settings, insecure), lambda: check_layers(settings),
                  lambda: check_curve_keys(settings), lambda: check_connectors(settings)):
        try:
            check()
        except (GeofenceError, OSError) as e:
            problems += str(e).splitlines()
    if problems:
        raise StartError(problems)
    refuse_damaged_stores(paths)
    check_fixes_cover_checkpoints(paths)
    check_worker_count(paths, workers)
    create_stores(settings, paths, workers)
    return paths


def create_stores(settings: Settings, paths: EnginePaths, workers: int) -> None:
    """Every store is made (or upgraded) here, once: the processes only open them
    (`engine.database.existing_stores_only`), so one restarted after its file was deleted
    stays down and says so, instead of starting a new empty store over the engine's
    history (acknowledging fixes nobody evaluates, forgetting acknowledgements)."""
    from alerts.alarm_store import AlarmStore
    from alerts.registry import RegistryStore
    from carriers.locate_store import LocateStore
    from desk.users import UserStore
    from ingest.store import Store
    from service.evaluation_store import EvaluationStore

    sync = settings.storage.sync
    opened = [Store(paths.fixes_db, sync), AlarmStore(paths.alarms_db, sync),
              RegistryStore(paths.registry_db), UserStore(paths.desk_db),
              LocateStore(paths.locate_db, sync)]
    opened += [EvaluationStore(paths.worker_db(k, workers), sync) for k in range(workers)]
    for store in opened:
        store.close()


def check_fixes_cover_checkpoints(paths: EnginePaths) -> None:
    """Refuse a fixes store that is missing or older than the workers' checkpoints.

    A new (or older) store hands out batch numbers the workers have already passed: every
    fix stored from then on would be acknowledged and never evaluated. A removed store is
    restored, never started anew."""
    from ingest.store import last_seq_of
    from service.evaluation_store import EvaluationStore

    done = 0
    for evaluation in paths.evaluation_files():
        if not evaluation.retired:
            with EvaluationStore(evaluation.path) as store:
                done = max(done, store.checkpoint())
    if done == 0:
        return
    last = last_seq_of(paths.fixes_db) if paths.fixes_db.exists() else 0
    if last < done:
        state = "is missing" if not paths.fixes_db.exists() else f"ends at batch {last}"
        raise StartError(f"{paths.fixes_db} {state}, but the workers have evaluated up to "
                         f"batch {done}: restore the storage path from a backup (geofence "
                         f"restore), or put the file back")


def check_storage(settings: Settings) -> EnginePaths:
    """`[storage] path` as EnginePaths, once a file could be created, written and synced
    there (a read-only or missing mount fails here, not in every child)."""
    where = f"{settings.source}: [storage] path {settings.storage.path!r}"
    try:
        paths = EnginePaths.create(settings.storage.path)
        probe = paths.root / f".write-check-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"geofence")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise StartError(f"{where} is not a writable directory: {e.strerror or e}") from e
    return paths


def check_layers(settings: Settings) -> None:
    """The layers load as the workers will load them (a missing or invalid file fails)."""
    from engine.layers import load_layers

    try:
        load_layers(settings)
    except (GeofenceError, OSError) as e:
        layers = settings.layers
        files = ", ".join(f"{k} = {v!r}" for k, v in (("jurisdictions", layers.jurisdictions),
                                                       ("zones", layers.zones)) if v)
        raise StartError(f"{settings.source}: [layers] {files}: {one_line(e)}") from e


def check_curve_keys(settings: Settings) -> None:
    """The CURVE key pair and allowed-key directories load, for ingest and alarms alike."""
    from ingest.keys import load_allowed_carriers, load_server_keys

    problems = []
    for section, keys_key, allowed_key in (("ingest", "curve_keys", "curve_carriers"),
                                           ("alerts", "curve_keys", "curve_subscribers")):
        table = getattr(settings, section)
        for key, load in ((keys_key, load_server_keys), (allowed_key, load_allowed_carriers)):
            directory = getattr(table, key)
            if not directory:
                continue
            try:
                load(directory)
            except (GeofenceError, OSError) as e:
                problems.append(f"{settings.source}: [{section}] {key}: {one_line(e)}")
    if problems:
        raise StartError(problems)


def check_connectors(settings: Settings) -> None:
    """Each `[connect.http.NAME]` can start: the environment variables it names are set,
    and its CURVE keys load (required when the ingest has CURVE on)."""
    from connect.config import ConnectConfigError, check_environment
    from ingest.carrier import load_curve

    problems = []
    for name, connector in settings.connect.http.items():
        where = f"{settings.source}: [connect.http.{name}]"
        try:
            check_environment(connector, os.environ)
        except ConnectConfigError as e:
            problems += [f"{settings.source}: [connect] http: {p}" for p in e.problems]
        if settings.ingest.curve_keys and not connector.curve_keys:
            problems.append(f"{where} curve_keys: the ingest has CURVE on; give the directory "
                            f"with server.key and {connector.carrier}.key_secret")
        elif connector.curve_keys:
            try:
                load_curve(connector.curve_keys, connector.carrier)
            except (GeofenceError, OSError) as e:
                problems.append(f"{where} curve_keys: {one_line(e)}")
    if problems:
        raise StartError(problems)


def check_bind(settings: Settings, insecure: bool) -> None:
    """Refuse to start where carriers would be unauthenticated off this machine."""
    from ingest.auth import check_bind_allowed

    if bool(settings.ingest.curve_keys) != bool(settings.ingest.curve_carriers):
        raise ConfigError("[ingest] curve_keys (the engine's key pair) and curve_carriers (the "
                          "allowed carriers' public keys) go together: set both or neither")
    check_bind_allowed(settings.ingest.bind, bool(settings.ingest.curve_keys), insecure)
    if bool(settings.alerts.curve_keys) != bool(settings.alerts.curve_subscribers):
        raise ConfigError("[alerts] curve_keys (the engine's key pair) and curve_subscribers "
                          "(the allowed subscribers' public keys) go together: set both or "
                          "neither")
    # Alarms carry personal data: off loopback the PUB socket needs CURVE too.
    check_bind_allowed(settings.alerts.publish, bool(settings.alerts.curve_keys), insecure)
    # The desk speaks plain HTTP: off loopback, only behind a TLS proxy (--insecure).
    if settings.desk.bind:
        check_bind_allowed(f"tcp://{settings.desk.bind}", False, insecure)
        from desk.hosts import configured_hosts
        configured_hosts(settings.desk)   # [desk] hosts: required when binding 0.0.0.0


def check_worker_count(paths: EnginePaths, workers: int) -> None:
    """Refuse a worker count that would evaluate stored batches twice.

    Workers partition subjects by ``subject % N`` and keep checkpoints per partition, so
    a new N starts new evaluation files. That is safe only once every partition of the
    old N has evaluated everything stored: then the new files start at the end. Every
    evaluation file is opened by a writer here first, which brings it (retired ones too,
    which no worker opens) to the current schema.
    """
    from service.evaluation_store import EvaluationStore

    old = {}
    for evaluation in paths.evaluation_files():
        with EvaluationStore(evaluation.path) as store:
            if not evaluation.retired and evaluation.count != workers:
                old[evaluation] = store.checkpoint()
    if not old:
        return
    from ingest.store import last_seq_of

    last = last_seq_of(paths.fixes_db) if paths.fixes_db.exists() else 0
    if min(old.values()) < last:
        count = min(evaluation.count for evaluation in old)
        raise ConfigError(f"stored fixes are still being evaluated by {count} worker(s); "
                          f"start with --workers {count} until they are done, then change")
    for evaluation in old:  # caught up: the new partitions start after the last stored batch
        evaluation.path.rename(paths.retired(evaluation.path))
    for k in range(workers):
        with EvaluationStore(paths.worker_db(k, workers)) as store:
            if store.checkpoint() == 0:
                store.start_after(last)

