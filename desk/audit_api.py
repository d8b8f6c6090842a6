"""`GET /api/audit?subject=&user=&since=&before=&limit=`: the audit log, cut to the
user's subtree (SPEC §11).

An entry about a subject is shown to users of the subject's supervising office or above
(a subject outside the user's subtree, or no longer in the registry, answers as if it
had no entries; asked for by name, 404 like a missing subject). An entry about nobody
(a login, say) is shown to users whose subtree holds the office of the user who acted.
Newest first; `before` (an entry's `seq`) pages back, and `next_before` says where the
next page starts (null: nothing older). One request reads at most MAX_SCANNED rows, so
a township's query over a province's log holds the desk's database thread briefly; its
page may then be short, with `next_before` to go on. Reading the log of one person is
itself a read of their data, so it is audited too ("audit.read").
"""

from aiohttp import web

from desk import audit
from desk.api import MAX_ID_CHARS, MAX_LIMIT, MAX_MS, NO_SUBJECT, _int
from desk.context import SESSION, ApiError, desk_of
from desk.http import json_response

DEFAULT_LIMIT = 200
PAGE_ROWS = 1_000   # rows read per step while the scope filters them
MAX_SCANNED = 20_000   # rows one request reads at most; `next_before` continues from there


def _text(query, name: str) -> str | None:
    value = query.get(name, "")
    if len(value) > MAX_ID_CHARS:
        raise ApiError(400, f"{name} has at most {MAX_ID_CHARS} characters")
    return value or None


async def list_audit(request: web.Request) -> web.Response:
    desk, session, q = desk_of(request), request[SESSION], request.query
    subject = _text(q, "subject")
    user = _text(q, "user")
    since = _int(q, "since", 0, MAX_MS)
    before = _int(q, "before", 1, MAX_MS)
    limit = _int(q, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)

    def read():
        scope = desk.stores.scope()
        subtree = scope.subtree(session.office)
        subjects = scope.registry.subjects

        def shown(entry: audit.AuditEntry) -> bool:
            if entry.subject is None:
                return entry.office in subtree
            found = subjects.get(entry.subject)
            return found is not None and found.office in subtree

        if subject is not None and not shown(audit.AuditEntry(0, "", "", "", "", subject, "")):
            raise ApiError(404, NO_SUBJECT)
        log, out, cursor, scanned = desk.stores.users.audit, [], before, 0
        while len(out) < limit:
            rows = log.entries(subject=subject, user=user, since_ms=since,
                               before_seq=cursor, limit=PAGE_ROWS)
            out.extend((seq, entry) for seq, entry in rows if shown(entry))
            scanned += len(rows)
            if len(rows) < PAGE_ROWS:
                return out[:limit], None
            cursor = rows[-1][0]
            if scanned >= MAX_SCANNED:   # a bounded hold of the desk's database thread
                break
        # more may be older: continue below the last entry shown, or the last one read
        return out[:limit], (out[limit - 1][0] if len(out) >= limit else cursor)

    found, next_before = await desk.stores.run(read)
    if subject is not None:
        await audit.record(request, "audit.read", subject=subject)
    return json_response({"entries": [{**entry.to_document(), "seq": seq}
                                      for seq, entry in found], "next_before": next_before})
