"""The admin figures' tallies (utils/tallies.py) on PostgreSQL: whatever writes users,
enrollments and payments (the ORM, one statement of many rows, a TRUNCATE), the figures read
from the tallies are the ones a model kept beside the writes expects, after every step; writers
never wait on each other for a total; folding loses nothing, even while writers write; a
recount rebuilds them; and the migration fills them from the rows already there."""
from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from flask_migrate import upgrade
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select, text

from app import create_app
from models import Course, Enrollment, Payment, Tally, User, db
from services import admin_service
from tests.support.scratch_services import scratch_postgres
from utils import tallies

MIGRATIONS = "migrations"
ROLES = ("student", "instructor", "admin")
STATUSES = ("active", "completed", "cancelled", "refunded")
PAYMENT_STATUSES = ("created", "pending", "completed", "failed", "refunded")
CURRENCIES = ("USD", "INR")
WHEN = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59),
                    timezones=st.just(timezone.utc))
AMOUNTS = st.decimals(min_value=0, max_value=Decimal("99999999.99"), places=2,
                      allow_nan=False, allow_infinity=False)


def _month(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment.astimezone(timezone.utc)
    return f"{moment.year:04d}-{moment.month:02d}"


def _empty(app) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                if table is not Tally.__table__:
                    conn.execute(table.delete())
            conn.execute(Tally.__table__.delete())  # after the tables whose deletes it tallies


def _rows(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Tally.id)))


def _read(app) -> dict:
    """Every figure as the admin pages read it: {name: {bucket: (count, amount)}}."""
    with app.app_context():
        found = admin_service.tallied(tallies.NAMES)
        db.session.remove()
        return found


def _computed(app) -> dict:
    """Every figure summed from the tables, in the same shape."""
    with app.app_context():
        found: dict = {name: {} for name in tallies.NAMES}
        for name, bucket, count, amount, _ in db.session.execute(
                text(tallies.computed_sql("postgresql", tallies.NAMES))):
            if count or amount:
                found[name][bucket] = (int(count), Decimal(amount))
        db.session.remove()
        return found


def _course(app, instructor: int, slug: str) -> int:
    with app.app_context():
        course = Course(title=slug, slug=slug, instructor_id=instructor, status="published")
        db.session.add(course)
        db.session.commit()
        return course.id


def _user(app, role: str = "student", active: bool = True) -> int:
    with app.app_context():
        user = User(email=f"{uuid.uuid4().hex[:12]}@example.com", first_name="T",
                    last_name="U", role=role, is_active=active)
        db.session.add(user)
        db.session.commit()
        return user.id


@pytest.fixture
def pg(postgres_app):
    _empty(postgres_app)
    yield postgres_app
    _empty(postgres_app)


class TallyMachine(RuleBasedStateMachine):
    """Random writes to the three tables; the tallies must equal a model of what the admin
    figures count after every one."""

    app = None

    def __init__(self):
        super().__init__()
        _empty(self.app)
        self.users: dict[int, tuple[str, bool]] = {}
        self.enrollments: dict[int, dict] = {}
        self.payments: dict[int, dict] = {}
        instructor = _user(self.app, "instructor")
        self.users[instructor] = ("instructor", True)
        self.courses = [_course(self.app, instructor, f"c-{uuid.uuid4().hex[:8]}")
                        for _ in range(2)]

    def teardown(self):
        _empty(self.app)

    # --- the model ----------------------------------------------------------------------------

    def expected(self) -> dict:
        counts: dict[str, Counter] = {name: Counter() for name in tallies.NAMES}
        money: dict[str, Counter] = {name: Counter() for name in tallies.NAMES}
        for role, active in self.users.values():
            counts["users"][f"{role}|{'active' if active else 'inactive'}"] += 1
        for row in self.enrollments.values():
            counts["enrollments"][row["status"]] += 1
            counts["course_enrollments"][f"{row['course_id']}|{row['status']}"] += 1
            counts["enrolled"][_month(row["enrolled_at"])] += 1
            if row["completed_at"] is not None:
                counts["completed"][_month(row["completed_at"])] += 1
        for row in self.payments.values():
            if row["status"] != "completed":
                continue
            for name, bucket in (("revenue", f"{_month(row['paid_at'])}|{row['currency']}"),
                                 ("course_revenue", f"{row['course_id']}|{row['currency']}")):
                counts[name][bucket] += 1
                money[name][bucket] += row["amount"]
        return {name: {bucket: (count, Decimal(money[name][bucket]))
                       for bucket, count in counts[name].items() if count}
                for name in tallies.NAMES}

    @invariant()
    def the_figures_are_the_model_s(self):
        expected = self.expected()
        assert _read(self.app) == expected
        assert _computed(self.app) == expected

    # --- users --------------------------------------------------------------------------------

    @rule(role=st.sampled_from(ROLES), active=st.booleans())
    def add_user(self, role, active):
        self.users[_user(self.app, role, active)] = (role, active)

    @precondition(lambda self: self.users)
    @rule(data=st.data(), role=st.sampled_from(ROLES), active=st.booleans())
    def change_user(self, data, role, active):
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        with self.app.app_context():
            db.session.execute(text("UPDATE users SET role = :role, is_active = :active "
                                    "WHERE id = :id"), {"role": role, "active": active,
                                                        "id": user_id})
            db.session.commit()
        self.users[user_id] = (role, active)

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def sign_in(self, data):
        """A write of a column no figure reads (a sign-in's last_login) appends nothing."""
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        before = _rows(self.app)
        with self.app.app_context():
            db.session.execute(text("UPDATE users SET last_login_at = now(), first_name = 'X' "
                                    "WHERE id = :id"), {"id": user_id})
            db.session.commit()
        assert _rows(self.app) == before

    # --- enrollments --------------------------------------------------------------------------

    @precondition(lambda self: self.users)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), enrolled_at=WHEN,
          completed_at=st.none() | WHEN)
    def enroll(self, data, status, enrolled_at, completed_at):
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        course_id = data.draw(st.sampled_from(self.courses))
        if any(r["user_id"] == user_id and r["course_id"] == course_id
               for r in self.enrollments.values()):
            return
        with self.app.app_context():
            row = Enrollment(user_id=user_id, course_id=course_id, status=status,
                             enrolled_at=enrolled_at, completed_at=completed_at)
            db.session.add(row)
            db.session.commit()
            self.enrollments[row.id] = {"user_id": user_id, "course_id": course_id,
                                        "status": status, "enrolled_at": enrolled_at,
                                        "completed_at": completed_at}

    @rule(status=st.sampled_from(STATUSES), enrolled_at=WHEN)
    def enroll_everyone_at_once(self, status, enrolled_at):
        """One INSERT of many rows: one grouped append per bucket, not one per row."""
        course_id = self.courses[1]
        taken = {r["user_id"] for r in self.enrollments.values() if r["course_id"] == course_id}
        newcomers = sorted(set(self.users) - taken)
        if not newcomers:
            return
        before = _rows(self.app)
        with self.app.app_context():
            ids = db.session.scalars(text(
                "INSERT INTO enrollments (user_id, course_id, status, progress_percent, "
                "enrolled_at, created_at, updated_at) "
                "SELECT u, :course, :status, 0, :at, now(), now() "
                "FROM unnest(CAST(:users AS INTEGER[])) AS u RETURNING id"),
                {"course": course_id, "status": status, "at": enrolled_at,
                 "users": newcomers}).all()
            db.session.commit()
        for row_id, user_id in zip(sorted(ids), newcomers):
            self.enrollments[row_id] = {"user_id": user_id, "course_id": course_id,
                                        "status": status, "enrolled_at": enrolled_at,
                                        "completed_at": None}
        assert _rows(self.app) - before <= 3  # status, course and status, month

    @precondition(lambda self: self.enrollments)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), completed_at=st.none() | WHEN)
    def change_enrollment(self, data, status, completed_at):
        row_id = data.draw(st.sampled_from(sorted(self.enrollments)))
        with self.app.app_context():
            row = db.session.get(Enrollment, row_id)
            row.status, row.completed_at = status, completed_at
            db.session.commit()
        self.enrollments[row_id].update(status=status, completed_at=completed_at)

    @precondition(lambda self: self.enrollments)
    @rule(data=st.data(), percent=st.decimals(min_value=0, max_value=100, places=2))
    def heartbeat(self, data, percent):
        """A progress write appends nothing."""
        row_id = data.draw(st.sampled_from(sorted(self.enrollments)))
        before = _rows(self.app)
        with self.app.app_context():
            db.session.execute(text("UPDATE enrollments SET progress_percent = :p, "
                                    "last_accessed_at = now(), status = status WHERE id = :id"),
                               {"p": percent, "id": row_id})
            db.session.commit()
        assert _rows(self.app) == before

    @precondition(lambda self: self.enrollments)
    @rule(data=st.data())
    def drop_enrollment(self, data):
        row_id = data.draw(st.sampled_from(sorted(self.enrollments)))
        with self.app.app_context():
            db.session.execute(text("DELETE FROM enrollments WHERE id = :id"), {"id": row_id})
            db.session.commit()
        del self.enrollments[row_id]

    # --- payments -----------------------------------------------------------------------------

    @precondition(lambda self: self.users)
    @rule(data=st.data(), status=st.sampled_from(PAYMENT_STATUSES),
          currency=st.sampled_from(CURRENCIES), amount=AMOUNTS, paid_at=st.none() | WHEN)
    def pay(self, data, status, currency, amount, paid_at):
        user_id = data.draw(st.sampled_from(sorted(self.users)))
        course_id = data.draw(st.sampled_from(self.courses))
        with self.app.app_context():
            row = Payment(user_id=user_id, course_id=course_id, gateway="stripe",
                          amount=amount, currency=currency, status=status, paid_at=paid_at)
            db.session.add(row)
            db.session.commit()
            self.payments[row.id] = {"course_id": course_id, "status": status,
                                     "currency": currency, "amount": amount,
                                     "paid_at": paid_at}

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), status=st.sampled_from(PAYMENT_STATUSES), paid_at=st.none() | WHEN)
    def settle(self, data, status, paid_at):
        row_id = data.draw(st.sampled_from(sorted(self.payments)))
        with self.app.app_context():
            row = db.session.get(Payment, row_id)
            row.status, row.paid_at = status, paid_at
            if status == "refunded":
                row.refunded_amount = row.amount
            db.session.commit()
        self.payments[row_id].update(status=status, paid_at=paid_at)

    @precondition(lambda self: self.payments)
    @rule(data=st.data())
    def drop_payment(self, data):
        row_id = data.draw(st.sampled_from(sorted(self.payments)))
        with self.app.app_context():
            db.session.execute(text("DELETE FROM payments WHERE id = :id"), {"id": row_id})
            db.session.commit()
        del self.payments[row_id]

    # --- upkeep -------------------------------------------------------------------------------

    @rule()
    def fold(self):
        with self.app.app_context():
            left = admin_service.compact_tallies()
        expected = self.expected()
        assert left == sum(len(buckets) for buckets in expected.values())

    @rule()
    def truncate_enrollments(self):
        with self.app.app_context():
            db.session.execute(text("TRUNCATE enrollments CASCADE"))
            db.session.commit()
        self.enrollments.clear()


def test_the_tallies_are_the_model_s_after_every_write(pg):
    TallyMachine.app = pg
    machine = TallyMachine.TestCase
    machine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                suppress_health_check=list(HealthCheck))
    machine().runTest()


def _enrollment_and_payment(conn, user_id: int, course_id: int) -> None:
    conn.execute(text("INSERT INTO enrollments (user_id, course_id, status, progress_percent, "
                      "enrolled_at, created_at, updated_at) "
                      "VALUES (:u, :c, 'active', 0, now(), now(), now())"),
                 {"u": user_id, "c": course_id})
    conn.execute(text("INSERT INTO payments (user_id, course_id, gateway, amount, currency, "
                      "status, refunded_amount, paid_at, created_at, updated_at) VALUES "
                      "(:u, :c, 'stripe', 10, 'USD', 'completed', 0, now(), now(), now())"),
                 {"u": user_id, "c": course_id})


def test_writers_never_wait_on_each_other_for_a_total(pg):
    """Two transactions that enroll in and pay for the same course, open at the same time: a
    shared counter row would keep the second waiting (here: past its lock timeout)."""
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "same-course")
    learners = [_user(pg) for _ in range(2)]
    with pg.app_context():
        engine = db.engine
    with engine.connect() as first, engine.connect() as second:
        for conn in (first, second):  # this transaction's only: the pool reuses connections
            conn.execute(text("SET LOCAL lock_timeout = '500ms'"))
        _enrollment_and_payment(first, learners[0], course)
        _enrollment_and_payment(second, learners[1], course)  # first still open
        first.commit()
        second.commit()
    found = _read(pg)
    assert found["course_enrollments"] == {f"{course}|active": (2, Decimal(0))}
    assert found["course_revenue"] == {f"{course}|USD": (2, Decimal("20.00"))}


def test_folding_while_writers_write_loses_nothing(pg):
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "busy-course")
    learners = [_user(pg) for _ in range(60)]
    with pg.app_context():
        engine = db.engine
    errors: list = []
    done = threading.Event()

    def write(mine):
        try:
            for user_id in mine:
                with engine.begin() as conn:
                    _enrollment_and_payment(conn, user_id, course)
        except Exception as exc:  # reported below
            errors.append(exc)

    def fold():
        try:
            while not done.is_set():
                with pg.app_context():
                    admin_service.compact_tallies()
        except Exception as exc:  # reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(learners[i::3],)) for i in range(3)]
    folders = [threading.Thread(target=fold) for _ in range(2)]
    for thread in writers + folders:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    done.set()
    for thread in folders:
        thread.join(timeout=60)
    assert not errors
    found = _read(pg)
    assert found == _computed(pg)
    assert found["course_enrollments"] == {f"{course}|active": (60, Decimal(0))}
    assert found["course_revenue"] == {f"{course}|USD": (60, Decimal("600.00"))}
    with pg.app_context():
        assert admin_service.compact_tallies() == sum(len(b) for b in found.values())


def test_a_read_that_adds_up_many_rows_folds_them(pg):
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "many-writes")
    with pg.app_context():
        with db.engine.begin() as conn:  # 1,200 statements: 1,200 appended rows
            for _ in range(admin_service.FOLD_AFTER + 200):
                conn.execute(text(
                    "INSERT INTO payments (user_id, course_id, gateway, amount, currency, "
                    "status, refunded_amount, paid_at, created_at, updated_at) VALUES "
                    "(:u, :c, 'stripe', 1, 'INR', 'completed', 0, NULL, now(), now())"),
                    {"u": instructor, "c": course})
    assert _rows(pg) > admin_service.FOLD_AFTER
    found = _read(pg)
    assert found["revenue"] == {"|INR": (1200, Decimal("1200.00"))}
    assert _rows(pg) == 3  # one row per bucket: the instructor, revenue, course revenue
    assert _read(pg) == found == _computed(pg)


def test_a_recount_rebuilds_what_a_restore_without_triggers_left_out(pg):
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "restored")
    learner = _user(pg)
    with pg.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE enrollments DISABLE TRIGGER USER"))
            _enrollment_and_payment(conn, learner, course)
            conn.execute(text("ALTER TABLE enrollments ENABLE TRIGGER USER"))
    assert _read(pg)["enrollments"] == {}  # what the restore left out
    result = pg.test_cli_runner().invoke(args=["figures", "recount"])
    assert result.exit_code == 0, result.output
    assert "Tally rows written" in result.output
    found = _read(pg)
    assert found["enrollments"] == {"active": (1, Decimal(0))}
    assert found == _computed(pg)


def test_the_admin_dashboard_reads_the_tallies(pg, auth_headers):
    admin = _user(pg, "admin")
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "dashboard-course")
    learner = _user(pg)
    with pg.app_context():
        with db.engine.begin() as conn:
            _enrollment_and_payment(conn, learner, course)
            # A figure the tables do not hold: only the tallies can answer it.
            conn.execute(text("INSERT INTO tallies (name, bucket, count, amount) VALUES "
                              "('users', 'student|active', 1000, 0)"))
        from flask_jwt_extended import create_access_token

        token = create_access_token(db.session.get(User, admin))
        db.session.remove()
    pg.config["ADMIN_STATS_CACHE_SECONDS"], before = 0, pg.config["ADMIN_STATS_CACHE_SECONDS"]
    try:
        body = pg.test_client().get("/api/v1/admin/dashboard",
                                    headers={"Authorization": f"Bearer {token}"}).get_json()
    finally:
        pg.config["ADMIN_STATS_CACHE_SECONDS"] = before
    data = body.get("data", body)
    assert data["users"]["by_role"]["student"] == {"total": 1001, "active": 1001}
    assert data["enrollments"] == {"total": 1, "completed": 0, "active": 1}
    assert data["revenue"]["all_time"] == [{"currency": "USD", "amount": 10.0, "payments": 1}]


def test_the_migration_fills_the_tallies_from_the_rows_already_there():
    with scratch_postgres("lms_tallies") as url:
        app = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            upgrade(directory=MIGRATIONS, revision="0012")
        instructor = _user(app, "instructor")
        course = _course(app, instructor, "before-tallies")
        learners = [_user(app), _user(app, active=False)]
        with app.app_context():
            with db.engine.begin() as conn:
                for learner in learners:
                    _enrollment_and_payment(conn, learner, course)
            upgrade(directory=MIGRATIONS)
        found = _read(app)
        assert found["users"] == {"instructor|active": (1, Decimal(0)),
                                  "student|active": (1, Decimal(0)),
                                  "student|inactive": (1, Decimal(0))}
        assert found["course_revenue"] == {f"{course}|USD": (2, Decimal("20.00"))}
        assert found == _computed(app)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_recount_during_a_folding_counts_each_row_once(pg):
    """A folding still open when a recount starts: the recount waits for it, then replaces
    everything (without the wait, the folded sums stayed beside the recount: twice the
    figures)."""
    instructor = _user(pg, "instructor")
    course = _course(pg, instructor, "recount-race")
    learners = [_user(pg) for _ in range(3)]
    with pg.app_context():
        engine = db.engine
        with engine.begin() as conn:
            for learner in learners:
                _enrollment_and_payment(conn, learner, course)
    outcome: dict = {}
    with engine.connect() as folding:
        folding.execute(text(tallies.compact_sql))  # open: its rows deleted, sums inserted

        def recount():
            with pg.app_context():
                outcome["rows"] = admin_service.recount_tallies()

        thread = threading.Thread(target=recount)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()  # waiting for the folding
        folding.commit()
    thread.join(timeout=30)
    assert not thread.is_alive() and outcome["rows"] > 0
    found = _read(pg)
    assert found["course_enrollments"] == {f"{course}|active": (3, Decimal(0))}
    assert found == _computed(pg)
