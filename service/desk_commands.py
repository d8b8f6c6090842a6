"""`geofence user add|list|disable|enable` and `geofence audit export`: the desk's people
and its audit log from the command line (SPEC §11).

They open desk.sqlite directly (a second connection beside a running desk is fine:
WAL); a disable ends the user's sessions in the file, which the desk sees at the next
request (401) and within a second on an open stream (`desk.revocation`).
"""

import csv
import json
import sys
from datetime import datetime, timezone

AUDIT_FORMATS = ("jsonl", "csv")
EXPORT_PAGE = 5_000


def add_commands(sub, common) -> None:
    """The `user` and `audit` subcommands, on `geofence`'s subparsers."""
    from desk.users import DEFAULT_ROLE, ROLES

    user = sub.add_parser("user", parents=[common], help="desk users (patrol desk log-ins)")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    uadd = user_sub.add_parser(
        "add", parents=[common], help="create a desk user of an office",
        description="Create a desk user who sees OFFICE's subtree. The password is asked "
        "twice on a terminal, or read from the first line of stdin when it is not one.")
    uadd.add_argument("name", metavar="NAME")
    uadd.add_argument("--office", required=True, metavar="CODE",
                      help="the user's office (a code in the registry)")
    uadd.add_argument("--role", choices=ROLES, default=DEFAULT_ROLE,
                      help="officer: reads and acts (default); viewer: reads only (the "
                      "procuratorate, an inspector)")
    uadd.add_argument("--replace", action="store_true",
                      help="give an existing user a new office, role and password")
    uadd.set_defaults(run=_user_add)
    ulist = user_sub.add_parser("list", parents=[common],
                                help="list desk users: name, office, role, state, created")
    ulist.set_defaults(run=_user_list)
    udisable = user_sub.add_parser(
        "disable", parents=[common], help="end a user's sessions now and refuse their logins",
        description="The user's next request is refused (401), their open live streams end "
        "within a second, and logins are refused until `geofence user enable`. The user and "
        "their audit entries are kept.")
    udisable.add_argument("name", metavar="NAME")
    udisable.set_defaults(run=_user_disable)
    uenable = user_sub.add_parser("enable", parents=[common],
                                  help="let a disabled user log in again")
    uenable.add_argument("name", metavar="NAME")
    uenable.set_defaults(run=_user_enable)

    audit = sub.add_parser("audit", parents=[common], help="the desk's audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    export = audit_sub.add_parser(
        "export", parents=[common], help="print the audit log, oldest first",
        description="Print every audit entry (who, office, role, action, subject, when, "
        "from where), oldest first, as JSON lines or CSV.")
    export.add_argument("--since", type=_instant, metavar="ISO",
                        help="only entries at or after this RFC 3339 time "
                        "(e.g. 2026-12-01T00:00:00+08:00)")
    export.add_argument("--subject", metavar="ID", help="only entries about this subject")
    export.add_argument("--user", metavar="NAME", help="only entries of this user")
    export.add_argument("--format", choices=AUDIT_FORMATS, default="jsonl")
    export.set_defaults(run=_audit_export)


def _instant(text: str) -> int:
    """Milliseconds of an RFC 3339 time with an offset (argparse type)."""
    import argparse

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset (+08:00 or Z)")
    return int(when.timestamp() * 1000)


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _user_store(settings):
    from desk.users import UserStore
    from engine.paths import EnginePaths

    return UserStore(EnginePaths.create(settings.storage.path).desk_db)


def _user_add(args) -> int:
    from desk.users import check_name, check_password
    from service.cli import UsageError, _registry_store, _settings

    settings = _settings(args)
    check_name(args.name)
    registry = _registry_store(settings)
    try:
        offices = registry.load().offices
    finally:
        registry.close()
    if args.office not in offices:
        raise UsageError(f"unknown office {args.office!r}: import it with "
                         "`geofence registry import` first")
    password = check_password(_read_password())
    with _user_store(settings) as users:
        user = users.add(args.name, args.office, password, role=args.role,
                         replace=args.replace)
    print(f"user {user.name}: office {user.office} {offices[user.office].name}, "
          f"role {user.role}{', disabled' if user.disabled else ''}")
    return 0


def _read_password() -> str:
    """From a prompt (asked twice) on a terminal, else the first line of stdin."""
    from service.cli import UsageError

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UsageError("the two passwords differ")
    return first


def _user_list(args) -> int:
    from service.cli import _settings

    with _user_store(_settings(args)) as users:
        for user in users.list():
            state = f"disabled {_iso(user.disabled_ms)}" if user.disabled else "active"
            print(f"{user.name}\t{user.office}\t{user.role}\t{state}\t"
                  f"{_iso(user.created_ms)}")
    return 0


def _user_disable(args) -> int:
    from service.cli import _settings

    with _user_store(_settings(args)) as users:
        user = users.disable(args.name)
    print(f"user {user.name}: disabled; sessions ended")
    return 0


def _user_enable(args) -> int:
    from service.cli import _settings

    with _user_store(_settings(args)) as users:
        user = users.enable(args.name)
    print(f"user {user.name}: enabled")
    return 0


def _audit_export(args) -> int:
    from desk.audit import AuditEntry
    from service.cli import _settings

    fields = list(AuditEntry.__dataclass_fields__)
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(["seq", "at", *fields])
    with _user_store(_settings(args)) as users:
        after = 0
        while True:
            rows = users.audit.entries(subject=args.subject, user=args.user,
                                       since_ms=args.since, after_seq=after,
                                       limit=EXPORT_PAGE, newest_first=False)
            for seq, entry in rows:
                doc = entry.to_document()
                if writer:
                    writer.writerow([seq, _iso(entry.at_ms), *(doc[f] for f in fields)])
                else:
                    out.write(json.dumps({"seq": seq, "at": _iso(entry.at_ms), **doc},
                                         ensure_ascii=False) + "\n")
            if len(rows) < EXPORT_PAGE:
                return 0
            after = rows[-1][0]
