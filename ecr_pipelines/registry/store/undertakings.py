"""F-gas / ODS undertakings (``registry.undertaking`` and its address, country, represent, user,
type, business-profile and history tables), set-based and idempotent.

``UndertakingSync`` applies the legacy upsert rules to a stream of raw F-gas / ODS records in
batches: a handful of statements per batch, not per company. What it keeps from the legacy
service: table and column names, the nulls it stored, representative and country history, the
derived country code, the "EEA double checks" into ``check_passed`` (re-run for every fetched
record), contact persons found by user name or else by e-mail, new ODS companies that fail the
checks are not stored, the BDR queue (``bdr_due``: every fetched company that passes, or whose
representative changed) and what ``organization_log`` counts. What it fixes (research notes §7):
a malformed record is rejected alone with its reason (a key nobody reads is ignored and
reported); contact removal removes exactly the persons missing from the payload; country rows
take the latest name and type. A record whose content hash is unchanged skips the parse and the
writes (only its checks and BDR queueing run again). ``sync_domain`` is the whole stage: window,
fetch, upsert, ``organization_log``.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import islice
from typing import Any

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import RegistryClient
from ecr_pipelines.registry.parse import (
    Address,
    ContactPerson,
    RecordRejected,
    Representative,
    Undertaking,
    apply_company_patch,
    apply_gb_old_representative_patch,
    parse_patch_users,
    parse_undertaking,
)
from ecr_pipelines.registry.patches import Patches
from ecr_pipelines.registry.reference import FGAS, ODS, ReferenceTables, load_reference_tables
from ecr_pipelines.registry.rules import (
    RepresentativeChangeKind,
    country_history_additions,
    derive_country_code,
    representative_change,
    run_double_checks,
    updated_since,
)

BATCH_SIZE = 500


@dataclass
class SyncReport:
    domain: str
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # external id, reason
    failed_checks: list[tuple[int, str | None, list[str], bool]] = field(
        default_factory=list
    )  # id, name, why, stored
    # Payload fields nobody reads (the registry added one): field path → external ids.
    unknown_fields: dict[str, list[str]] = field(default_factory=dict)
    # What the legacy counted into organization_log.organizations: every fetched record it
    # stored, unchanged ones included (all F-gas records, ODS ones that passed or existed).
    counted: int = 0
    contacts_added: int = 0
    contacts_removed: int = 0
    users_renamed: int = 0
    users_deleted: int = 0
    statements: int = 0

    @property
    def stored(self) -> int:
        return self.inserted + self.updated


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def content_hash(raw: Mapping[str, Any], extra_users: Sequence[Mapping[str, Any]], patches: Any) -> str:
    """What decides the stored row: the record, the operator's patches and users for it."""
    canonical = json.dumps([raw, list(extra_users), patches], sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()


def last_date_updated(sql: Sql, domain: str) -> date | None:
    return sql.scalar("SELECT max(date_updated) FROM registry.undertaking WHERE domain = :d", {"d": domain})


# ---------------------------------------------------------------------------------------------
# the upsert


@dataclass
class _Prepared:
    raw: dict[str, Any]
    undertaking: Undertaking
    passed: bool
    messages: list[str]
    source_hash: str


@dataclass
class _Unchanged:
    """A record whose content hash equals the stored one: only its checks run again."""

    id: int
    external_id: int
    name: str | None
    passed: bool
    messages: list[str]


@dataclass
class _Existing:
    id: int
    source_hash: str | None
    address_id: int | None
    address_country: str | None
    represent_id: int | None
    represent_vat: str | None
    represent_address_id: int | None
    history: list[str]
    user_ids: list[int]


@dataclass
class _User:
    """A ``registry."user"`` row while a batch resolves its contact persons (id None: new)."""

    id: int | None
    username: str
    ecas_id: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    type: str | None
    renamed: bool = False
    dirty: bool = False


# A passing username for the first step of renaming users whose names swap (registry user names
# have no blanks, so this collides with none).
_RENAME_PREFIX = " renaming "


class UndertakingSync:
    """Upserts one domain's undertakings; ``run(records)`` returns a ``SyncReport``."""

    def __init__(
        self,
        sql: Sql,
        domain: str,
        *,
        patches: Patches | None = None,
        excepted: Iterable[str | int] = (),
        refs: ReferenceTables | None = None,
        run_id: str | None = None,
        today: date | None = None,
        force: bool = False,
    ) -> None:
        self.sql = sql
        self.domain = domain
        self.patches = patches or Patches()
        self.excepted = {str(e) for e in excepted}
        self.refs = refs or load_reference_tables()
        self.run_id = run_id
        self.today = today or date.today()
        self.force = force
        self.report = SyncReport(domain)

    # -- preparing ---------------------------------------------------------------------------
    def _checked(self, raw: Mapping[str, Any], external_id: str) -> tuple[dict[str, Any], list[str]]:
        """The record as the checks see it (PATCH_GB_OLD_REPR merged) and the failed rules."""
        record = dict(raw)
        if self.domain == FGAS:
            record = apply_gb_old_representative_patch(record, self.patches.gb_old_repr.get(external_id))
        # The checks see the registry's data; PATCH_COMPANIES only changes what is stored.
        return record, run_double_checks(record, self.domain, self.refs, self.excepted)

    def _prepare(self, raw: Any, source_hash: str) -> _Prepared | None:
        external_id = str(raw.get("id")) if isinstance(raw, Mapping) else "?"
        try:
            if not isinstance(raw, Mapping):
                raise RecordRejected("bad value in record: expected an object")
            try:
                record, messages = self._checked(raw, external_id)
                patched = apply_company_patch(record, self.patches.companies.get(external_id))
                extra_raw = self.patches.users.get(external_id, [])
                undertaking = parse_undertaking(patched, self.refs, parse_patch_users(extra_raw))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                if isinstance(exc, RecordRejected):
                    raise
                # A shape nobody foresaw is still this record's problem, never the batch's.
                raise RecordRejected(f"malformed record: {type(exc).__name__}: {exc}") from exc
            if undertaking.domain != self.domain:
                raise RecordRejected(
                    f"bad value in domain: {undertaking.domain!r} from the {self.domain} registry"
                )
        except RecordRejected as exc:
            self.report.rejected.append((external_id, exc.reason))
            self.sql.exec(
                "INSERT INTO registry.sync_rejection (run_id, domain, external_id, reason, payload) "
                "VALUES (:run, :domain, :ext, :reason, CAST(:payload AS jsonb))",
                {
                    "run": self.run_id,
                    "domain": self.domain,
                    "ext": external_id,
                    "reason": exc.reason,
                    "payload": json.dumps(raw, default=str),
                },
            )
            return None
        for path in undertaking.unknown_fields:
            self.report.unknown_fields.setdefault(path, []).append(external_id)
        passed = not messages
        return _Prepared(patched, undertaking, passed, messages, source_hash)

    # -- reading what is stored ----------------------------------------------------------------
    def _existing(self, ids: list[int]) -> dict[int, _Existing]:
        # Three flat queries keyed by ids rather than correlated sub-selects: each is one index
        # range scan, whatever the planner's statistics say right after a bulk load.
        rows = self.sql.all(
            """
            SELECT u.id, u.external_id, u.source_hash, u.address_id, c.code AS address_country,
                   u.represent_id, r.vatnumber AS represent_vat, r.address_id AS represent_address_id
            FROM registry.undertaking u
            LEFT JOIN registry.address a ON a.id = u.address_id
            LEFT JOIN registry.country c ON c.id = a.country_id
            LEFT JOIN registry.represent r ON r.id = u.represent_id
            WHERE u.domain = :domain AND u.external_id = ANY(:ids)
            """,
            {"domain": self.domain, "ids": ids},
        )
        if not rows:
            return {}
        internal_ids = {"ids": [r.id for r in rows]}
        history = self.sql.grouped(
            "SELECT h.undertaking_id, c.code FROM registry.undertaking_country_history h "
            "JOIN registry.country c ON c.id = h.country_id WHERE h.undertaking_id = ANY(:ids)",
            internal_ids,
        )
        user_ids = self.sql.grouped(
            "SELECT undertaking_id, user_id FROM registry.undertaking_users WHERE undertaking_id = ANY(:ids)",
            internal_ids,
        )
        return {
            r.external_id: _Existing(
                r.id,
                r.source_hash,
                r.address_id,
                r.address_country,
                r.represent_id,
                r.represent_vat,
                r.represent_address_id,
                sorted(history.get(r.id, [])),
                user_ids.get(r.id, []),
            )
            for r in rows
        }

    def _country_ids(self, addresses: Iterable[Address]) -> dict[str, int]:
        # Latest name and type win (the legacy "first writer wins" kept stale rows forever).
        latest = {a.country.code: a.country for a in addresses}
        if not latest:
            return {}
        rows = self.sql.values(
            "INSERT INTO registry.country (code, name, type) VALUES %s ON CONFLICT (code) DO UPDATE SET "
            "name = EXCLUDED.name, type = EXCLUDED.type RETURNING code, id",
            [(c.code, c.name, c.type) for c in latest.values()],
            fetch=True,
        )
        return dict(rows)

    # -- writing -------------------------------------------------------------------------------
    def run(self, records: Iterable[Any]) -> SyncReport:
        for batch in _batches(records, BATCH_SIZE):
            self._batch(batch)
        self.report.users_deleted = self.sql.exec(
            'DELETE FROM registry."user" us WHERE NOT EXISTS '
            "(SELECT 1 FROM registry.undertaking_users uu WHERE uu.user_id = us.id)"
        )
        self.report.statements = self.sql.statements
        return self.report

    def _fingerprint(self, raw: Any) -> tuple[int, str] | None:
        """(external id, content hash) of a record, before any parsing; None when it has no id."""
        if not isinstance(raw, Mapping):
            return None
        try:
            external_id = int(raw.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        key = str(external_id)
        extra = self.patches.users.get(key, [])
        patches = [self.patches.companies.get(key), self.patches.gb_old_repr.get(key), key in self.excepted]
        return external_id, content_hash(raw, extra, patches)

    def _batch(self, raws: list[Any]) -> None:
        self.report.fetched += len(raws)
        fingerprints = [self._fingerprint(raw) for raw in raws]
        existing = self._existing([f[0] for f in fingerprints if f is not None])
        latest: dict[int, _Prepared | _Unchanged] = {}  # a repeated id: the last one wins
        for raw, fingerprint in zip(raws, fingerprints, strict=True):
            old = existing.get(fingerprint[0]) if fingerprint is not None else None
            if (
                fingerprint is not None
                and old is not None
                and not self.force
                and old.source_hash == fingerprint[1]
            ):
                # Same content as stored: no parse, no writes. The legacy still ran the checks
                # (their inputs include settings and reference tables the hash does not see) and
                # queued a passing company's BDR folder check, so those still happen.
                _, messages = self._checked(raw, str(fingerprint[0]))
                name = raw.get("name")
                latest[fingerprint[0]] = _Unchanged(
                    old.id, fingerprint[0], name if isinstance(name, str) else None, not messages, messages
                )
                self.report.unchanged += 1
                self.report.counted += 1
                continue
            item = self._prepare(raw, fingerprint[1] if fingerprint else "")
            if item is None:
                continue
            ext_id = item.undertaking.external_id
            latest[ext_id] = item
            # Legacy rule: every F-gas record is stored; an ODS one only when it passed or exists.
            if item.passed or existing.get(ext_id) is not None or self.domain == FGAS:
                self.report.counted += 1
        todo: list[tuple[_Prepared, _Existing | None]] = []
        rechecked: list[_Unchanged] = []
        for ext_id, entry in latest.items():
            if isinstance(entry, _Unchanged):
                if not entry.passed:
                    self.report.failed_checks.append((ext_id, entry.name, entry.messages, True))
                rechecked.append(entry)
                continue
            old = existing.get(ext_id)
            if not entry.passed:
                self.report.failed_checks.append(
                    (ext_id, entry.undertaking.name, entry.messages, old is not None or self.domain == FGAS)
                )
                # Legacy rule: a new ODS company that fails the checks is not stored.
                if old is None and self.domain == ODS:
                    continue
            todo.append((entry, old))
        if rechecked:
            self._write_rechecked(rechecked)
        if todo:
            self._write(todo)

    def _write_rechecked(self, rechecked: list[_Unchanged]) -> None:
        """The checks' outcome of unchanged records; a passing one is queued for its BDR folder
        check (``bdr_due``), as the legacy queued every passing company it fetched."""
        self.sql.values(
            """
            UPDATE registry.undertaking u SET check_passed = v.passed, check_messages = v.messages,
                date_updated_in_ecr = CASE WHEN u.check_passed IS DISTINCT FROM v.passed
                                           THEN v.today ELSE u.date_updated_in_ecr END,
                bdr_due = u.bdr_due OR v.passed
            FROM (VALUES %s) AS v (id, passed, messages, today)
            WHERE u.id = v.id
            """,
            [(r.id, r.passed, json.dumps(r.messages), self.today) for r in rechecked],
            template="(%s, %s, %s::jsonb, %s::date)",
        )

    def _write(self, todo: list[tuple[_Prepared, _Existing | None]]) -> None:
        sql = self.sql
        addresses = [i.undertaking.address for i, _ in todo]
        addresses += [i.undertaking.represent.address for i, _ in todo if i.undertaking.represent]
        countries = self._country_ids(addresses)

        def address_row(a: Address) -> tuple[Any, ...]:
            return (a.street, a.number, a.zipcode, a.city, countries[a.country.code])

        # Addresses: new rows for new companies, in-place updates for known ones.
        new_items = [(i, o) for i, o in todo if o is None or o.address_id is None]
        new_address_ids = sql.values(
            "INSERT INTO registry.address (street, number, zipcode, city, country_id) VALUES %s RETURNING id",
            [address_row(i.undertaking.address) for i, _ in new_items],
            fetch=True,
        )
        address_id: dict[int, int] = {
            i.undertaking.external_id: row[0] for (i, _), row in zip(new_items, new_address_ids, strict=True)
        }
        updates = [(i, o) for i, o in todo if o is not None and o.address_id is not None]
        sql.batch(
            "UPDATE registry.address SET street=%s, number=%s, zipcode=%s, city=%s, country_id=%s WHERE id=%s",
            [(*address_row(i.undertaking.address), o.address_id) for i, o in updates],
        )
        address_id.update({i.undertaking.external_id: o.address_id for i, o in updates})

        # Representatives (F-gas only): history on removal or VAT change, in place otherwise.
        represent_id: dict[int, int | None] = {}
        to_history: list[tuple[int, int]] = []  # external id, represent id
        to_create: list[tuple[int, Representative]] = []
        in_place: list[tuple[Representative, int, int]] = []
        rep_changed: set[int] = set()
        country_additions: dict[int, list[str]] = {}
        for item, old in todo:
            u = item.undertaking
            old_rep = (
                Representative(None, u.address, old.represent_vat or "", "", "", "")
                if old is not None and old.represent_id is not None
                else None
            )
            change = representative_change(old_rep, u.represent)
            if change.changed or old is None:
                rep_changed.add(u.external_id)
            if change.to_history is not None and old is not None and old.represent_id is not None:
                to_history.append((u.external_id, old.represent_id))
            if change.kind in (RepresentativeChangeKind.CREATED, RepresentativeChangeKind.REPLACED):
                to_create.append((u.external_id, u.represent))  # type: ignore[arg-type]
            elif change.kind is RepresentativeChangeKind.UPDATED and old is not None:
                in_place.append((u.represent, old.represent_id, old.represent_address_id))  # type: ignore[arg-type]
                represent_id[u.external_id] = old.represent_id
            else:
                represent_id[u.external_id] = None
            country_additions[u.external_id] = country_history_additions(
                old.address_country if old else None, u, change, old.history if old else ()
            )
        rep_address_ids = sql.values(
            "INSERT INTO registry.address (street, number, zipcode, city, country_id) VALUES %s RETURNING id",
            [address_row(rep.address) for _, rep in to_create],
            fetch=True,
        )
        rep_ids = sql.values(
            "INSERT INTO registry.represent (name, address_id, vatnumber, contact_first_name, contact_last_name, "
            "contact_email) VALUES %s RETURNING id",
            [
                (r.name, a[0], r.vatnumber, r.contact_first_name, r.contact_last_name, r.contact_email)
                for (_, r), a in zip(to_create, rep_address_ids, strict=True)
            ],
            fetch=True,
        )
        represent_id.update({ext: row[0] for (ext, _), row in zip(to_create, rep_ids, strict=True)})
        sql.batch(
            "UPDATE registry.represent SET name=%s, contact_first_name=%s, contact_last_name=%s, contact_email=%s "
            "WHERE id=%s",
            [
                (r.name, r.contact_first_name, r.contact_last_name, r.contact_email, rid)
                for r, rid, _ in in_place
            ],
        )
        sql.batch(
            "UPDATE registry.address SET street=%s, number=%s, zipcode=%s, city=%s, country_id=%s WHERE id=%s",
            [(*address_row(r.address), aid) for r, _, aid in in_place if aid is not None],
        )

        # The undertakings themselves.
        rows = []
        for item, old in todo:
            u = item.undertaking
            rows.append(
                (
                    u.external_id,
                    u.registration_id,
                    u.name,
                    address_id[u.external_id],
                    u.website,
                    u.phone,
                    u.domain,
                    u.date_created,
                    u.date_updated,
                    self.today if old is not None else None,
                    u.status,
                    derive_country_code(u),  # NULL when there is none, as the legacy stored it
                    u.country_code_orig,
                    u.undertaking_type,
                    u.vat,
                    u.eori_number,
                    represent_id[u.external_id],
                    item.passed,
                    json.dumps(item.messages),
                    item.source_hash,
                    item.passed or u.external_id in rep_changed,
                )
            )
        ids = sql.values(
            """
            INSERT INTO registry.undertaking (external_id, registration_id, name, address_id, website, phone,
                domain, date_created, date_updated, date_updated_in_ecr, status, country_code, country_code_orig,
                undertaking_type, vat, eori_number, represent_id, check_passed, check_messages, source_hash,
                bdr_due)
            VALUES %s
            ON CONFLICT (external_id, domain) DO UPDATE SET
                registration_id = EXCLUDED.registration_id, name = EXCLUDED.name,
                address_id = EXCLUDED.address_id, website = EXCLUDED.website, phone = EXCLUDED.phone,
                date_created = EXCLUDED.date_created, date_updated = EXCLUDED.date_updated,
                date_updated_in_ecr = EXCLUDED.date_updated_in_ecr, status = EXCLUDED.status,
                country_code = EXCLUDED.country_code, country_code_orig = EXCLUDED.country_code_orig,
                undertaking_type = EXCLUDED.undertaking_type, vat = EXCLUDED.vat,
                eori_number = EXCLUDED.eori_number, represent_id = EXCLUDED.represent_id,
                check_passed = EXCLUDED.check_passed, check_messages = EXCLUDED.check_messages,
                source_hash = EXCLUDED.source_hash,
                bdr_due = registry.undertaking.bdr_due OR EXCLUDED.bdr_due
            RETURNING external_id, id
            """,
            rows,
            template="(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            fetch=True,
        )
        internal = dict(ids)
        self.report.inserted += sum(1 for _, old in todo if old is None)
        self.report.updated += sum(1 for _, old in todo if old is not None)
        uids = list(internal.values())

        # Types and business profiles: replaced wholesale, as the legacy sync did.
        sql.exec("DELETE FROM registry.undertaking_types WHERE undertaking_id = ANY(:ids)", {"ids": uids})
        sql.exec(
            "DELETE FROM registry.undertaking_businessprofile WHERE undertaking_id = ANY(:ids)", {"ids": uids}
        )
        type_rows, profile_rows = [], []
        for item, _ in todo:
            u = item.undertaking
            uid = internal[u.external_id]
            known_types = (self.refs.find_type(t, u.domain) for t in u.types)
            type_rows += [(uid, t.id) for t in known_types if t is not None]
            profile_rows += [(uid, bp.id) for bp in u.business_profiles]
        sql.values(
            "INSERT INTO registry.undertaking_types (undertaking_id, type_id) VALUES %s ON CONFLICT DO NOTHING",
            type_rows,
        )
        sql.values(
            "INSERT INTO registry.undertaking_businessprofile (undertaking_id, businessprofile_id) VALUES %s "
            "ON CONFLICT DO NOTHING",
            profile_rows,
        )

        # History rows.
        sql.values(
            "INSERT INTO registry.undertaking_represent_history (undertaking_id, represent_id) VALUES %s "
            "ON CONFLICT DO NOTHING",
            [(internal[ext], rid) for ext, rid in to_history],
        )
        history_codes = {code for codes in country_additions.values() for code in codes}
        missing = history_codes - set(countries)
        if missing:
            countries.update(
                dict(
                    sql.all(
                        "SELECT code, id FROM registry.country WHERE code = ANY(:c)", {"c": list(missing)}
                    )
                )
            )
        sql.values(
            "INSERT INTO registry.undertaking_country_history (undertaking_id, country_id) VALUES %s "
            "ON CONFLICT DO NOTHING",
            [
                (internal[ext], countries[c])
                for ext, codes in country_additions.items()
                for c in codes
                if c in countries
            ],
        )

        self._write_contacts(todo, internal)

    def _write_contacts(
        self, todo: list[tuple[_Prepared, _Existing | None]], internal: dict[int, int]
    ) -> None:
        """Link every undertaking to the users of its payload, found the legacy way.

        Per person, in payload order: the user with that user name, else (legacy rule) the
        oldest user with that e-mail, unless the user name is an e-mail and the payload repeats
        an e-mail. A user found by e-mail takes the new user name and keeps its row and
        ``ecas_id``, so a registry login rename does not cut the user off BDR (BDR looks users up
        by ``ecas_id``). Then: ``ecas_id`` set to the user name when empty (and the name is not an
        e-mail); a ``type`` overwritten only when the payload has the key (a new user without it
        stores NULL). Links to users no longer in the payload are removed (all of them when the
        payload is empty: the legacy loop removed nobody then).
        """
        sql = self.sql
        persons = [p for item, _ in todo for p in item.undertaking.contact_persons]
        if not persons and not any(old is not None and old.user_ids for _, old in todo):
            return
        usernames = list({p.username for p in persons})
        emails = list({p.email for p in persons if p.email})
        users = [
            _User(r.id, r.username, r.ecas_id, r.first_name, r.last_name, r.email, r.type)
            for r in sql.all(
                'SELECT id, username, ecas_id, first_name, last_name, email, type FROM registry."user" '
                "WHERE username = ANY(:u) OR email = ANY(:e) ORDER BY id",
                {"u": usernames, "e": emails},
            )
        ]
        by_username = {u.username: u for u in users}
        by_email: dict[str, list[_User]] = {}
        for user in users:  # oldest first: the legacy's `.first()` on an unordered scan
            if user.email:
                by_email.setdefault(user.email, []).append(user)
        created: list[_User] = []
        resolved: list[tuple[int, list[_User]]] = []  # undertaking id, its users

        def move_email(user: _User, email: str | None) -> None:
            if user.email:
                by_email[user.email].remove(user)
            if email:
                group = by_email.setdefault(email, [])
                group.append(user)
                group.sort(key=lambda u: (u.id is None, u.id or 0))

        for item, _ in todo:
            contacts = item.undertaking.contact_persons
            repeated_emails = len({p.email for p in contacts}) != len(contacts)
            mine: list[_User] = []
            for person in contacts:
                user = by_username.get(person.username)
                if user is None and person.email and not ("@" in person.username and repeated_emails):
                    same_email = by_email.get(person.email)
                    user = same_email[0] if same_email else None
                if user is None:
                    user = _User(
                        None,
                        person.username,
                        person.ecas_id,
                        person.first_name,
                        person.last_name,
                        person.email,
                        person.type,
                    )
                    created.append(user)
                    by_username[user.username] = user
                    if user.email:
                        by_email.setdefault(user.email, []).append(user)  # newest: last
                else:
                    self._update_user(user, person, by_username, move_email)
                if user not in mine:
                    mine.append(user)
            resolved.append((internal[item.undertaking.external_id], mine))

        renamed = [u for u in users if u.renamed]
        self.report.users_renamed += len(renamed)
        # Two steps, so that users whose names swap never collide on the unique user name.
        sql.batch(
            'UPDATE registry."user" SET username = %s WHERE id = %s',
            [(f"{_RENAME_PREFIX}{u.id}", u.id) for u in renamed],
        )
        sql.batch(
            'UPDATE registry."user" SET username = %s, ecas_id = %s, first_name = %s, last_name = %s, '
            "email = %s, type = %s WHERE id = %s",
            [
                (u.username, u.ecas_id, u.first_name, u.last_name, u.email, u.type, u.id)
                for u in users
                if u.dirty
            ],
        )
        new_ids = sql.values(
            # ON CONFLICT: the other domain's sync may have created the same user meanwhile.
            'INSERT INTO registry."user" (username, ecas_id, first_name, last_name, email, type) VALUES %s '
            "ON CONFLICT (username) DO UPDATE SET first_name = EXCLUDED.first_name, "
            "last_name = EXCLUDED.last_name, email = EXCLUDED.email, "
            'type = coalesce(EXCLUDED.type, registry."user".type), '
            "ecas_id = coalesce(nullif(registry.\"user\".ecas_id, ''), EXCLUDED.ecas_id) RETURNING id",
            [(u.username, u.ecas_id, u.first_name, u.last_name, u.email, u.type) for u in created],
            fetch=True,
        )
        for user, row in zip(created, new_ids, strict=True):
            user.id = row[0]

        before = {internal[item.undertaking.external_id]: set(old.user_ids) for item, old in todo if old}
        links: set[tuple[int, int]] = set()
        removals: list[tuple[int, list[int]]] = []
        for undertaking_id, mine in resolved:
            wanted = {u.id for u in mine if u.id is not None}
            linked = before.get(undertaking_id, set())
            links.update((undertaking_id, user_id) for user_id in wanted)
            self.report.contacts_added += len(wanted - linked)
            gone = sorted(linked - wanted)
            self.report.contacts_removed += len(gone)
            if gone:
                removals.append((undertaking_id, gone))
        sql.values(
            "INSERT INTO registry.undertaking_users (undertaking_id, user_id) VALUES %s ON CONFLICT DO NOTHING",
            sorted(links),
        )
        sql.batch(
            "DELETE FROM registry.undertaking_users WHERE undertaking_id = %s AND user_id = ANY(%s)",
            removals,
        )

    @staticmethod
    def _update_user(
        user: _User,
        person: ContactPerson,
        by_username: dict[str, _User],
        move_email: Callable[[_User, str | None], None],
    ) -> None:
        """The legacy update of a known user from a payload person (only what differs)."""
        if user.username != person.username:
            by_username.pop(user.username, None)
            by_username[person.username] = user
            user.username = person.username
            user.renamed = user.id is not None
            user.dirty = True
        if user.email != person.email:
            move_email(user, person.email)
            user.email = person.email
            user.dirty = True
        for attribute in ("first_name", "last_name") + (("type",) if person.has_type else ()):
            value = getattr(person, attribute)
            if getattr(user, attribute) != value:
                setattr(user, attribute, value)
                user.dirty = True
        if not user.ecas_id and person.ecas_id:
            user.ecas_id = person.ecas_id
            user.dirty = True


# ---------------------------------------------------------------------------------------------
# the stage: window, fetch, upsert, log


def parse_window_date(text: str) -> date:
    """An ``updated_since`` as the operator types it: ``DD/MM/YYYY`` (legacy CLI) or ISO."""
    for fmt in ("%d/%m/%Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"updated_since {text!r} is neither DD/MM/YYYY nor YYYY-MM-DD")


@dataclass(frozen=True)
class SyncRequest:
    """What to fetch, as the legacy ``flask sync fgases|ods`` options."""

    days: int | None = None
    updated_since: date | None = None
    page_size: int | None = 100
    external_id: int | None = None
    registration_id: str | None = None
    force: bool = False

    @property
    def single(self) -> bool:
        """One company asked by id or registration number: no window (as the legacy CLI)."""
        return self.external_id is not None or bool(self.registration_id)

    @property
    def logged(self) -> bool:
        """Whether the run gets an ``organization_log`` row: the legacy skipped it only for a
        company asked by external id (a registration-number fetch was logged)."""
        return self.external_id is None


@dataclass
class DomainSync:
    """One domain's sync: the upsert report and what surrounds it."""

    report: SyncReport
    window: date | None
    stored: int  # undertakings of the domain in the table afterwards
    seconds: float


def sync_domain(
    sql: Sql,
    client: RegistryClient,
    request: SyncRequest,
    *,
    patches: Patches | None = None,
    excepted: Iterable[str | int] = (),
    run_id: str | None = None,
    today: date | None = None,
    progress: Callable[[str], None] | None = None,
) -> DomainSync:
    """Fetch one domain's undertakings (pages streamed into the upsert) and store them, in the
    caller's transaction: an upstream failure mid-way (``RegistryApiError``) stores nothing."""
    started = time.perf_counter()
    domain = client.domain
    today = today or date.today()
    window = (
        None
        if request.single
        else updated_since(request.days, request.updated_since, last_date_updated(sql, domain), today)
    )
    say = progress or (lambda _message: None)
    say(f"{domain}: fetching undertakings updated since {window or 'the beginning'}")

    def records() -> Iterator[dict[str, Any]]:
        pages = client.undertakings(window, request.page_size, request.external_id, request.registration_id)
        for number, page in enumerate(pages, start=1):
            say(f"{domain}: page {number}, {len(page)} records")
            yield from page

    sync = UndertakingSync(
        sql, domain, patches=patches, excepted=excepted, run_id=run_id, today=today, force=request.force
    )
    report = sync.run(records())
    if request.logged:
        sql.exec(
            "INSERT INTO registry.organization_log (domain, using_last_update, organizations, fetched, inserted, "
            "updated, rejected, failed_checks, run_id) VALUES (:d, :w, :n, :f, :i, :u, :r, :c, :run)",
            {
                "d": domain,
                "w": window,
                "n": report.counted,
                "f": report.fetched,
                "i": report.inserted,
                "u": report.updated,
                "r": len(report.rejected),
                "c": len(report.failed_checks),
                "run": run_id,
            },
        )
    stored = sql.scalar("SELECT count(*) FROM registry.undertaking WHERE domain = :d", {"d": domain})
    return DomainSync(report, window, int(stored or 0), time.perf_counter() - started)
