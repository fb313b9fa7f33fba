"""A small, believable demo catalog for development (`flask seed-demo`, `make run`).

Idempotent: running it again finds what is there by its natural keys and adds nothing twice.
"""
from __future__ import annotations

import secrets
from decimal import Decimal

from sqlalchemy import func, select

from models import Course, Lesson, MasterCategory, Module, Subcategory, User, db
from utils.helpers import utcnow
from utils.validators import slugify

DEMO_INSTRUCTOR = "instructor@demo.aifirstacademy.com"
DEMO_STUDENT = "student@demo.aifirstacademy.com"

CATALOG = [
    ("Artificial Intelligence", "Machine learning, deep learning and applied AI.", [
        ("Machine Learning", [
            ("Machine Learning Foundations", "Regression, classification and model evaluation "
             "with scikit-learn.", Decimal("0.00"), "beginner", [
                ("Getting started", ["What machine learning is", "Setting up Python and Jupyter"]),
                ("Supervised learning", ["Linear regression", "Logistic regression",
                                         "Evaluating a model"]),
            ]),
            ("Deep Learning with PyTorch", "Neural networks from tensors to training loops.",
             Decimal("49.99"), "intermediate", [
                ("Tensors and autograd", ["Tensors", "Automatic differentiation"]),
                ("Training networks", ["Your first network", "Regularisation", "Saving models"]),
            ]),
        ]),
        ("Generative AI", [
            ("Prompt Engineering for Developers", "Designing, testing and shipping prompts.",
             Decimal("19.00"), "beginner", [
                ("Prompt basics", ["Anatomy of a prompt", "Few-shot examples"]),
                ("In production", ["Evaluating prompts", "Guardrails"]),
            ]),
        ]),
    ]),
    ("Software Development", "Building and shipping software.", [
        ("Web Development", [
            ("REST APIs with Flask", "Design, build and test a production REST API.",
             Decimal("29.00"), "intermediate", [
                ("Foundations", ["HTTP in one lesson", "Your first Flask app"]),
                ("Production", ["Authentication with JWT", "Testing with pytest", "Deploying"]),
            ]),
        ]),
    ]),
]


def _get_or_create_user(email: str, first: str, last: str, role: str) -> tuple[User, str | None]:
    user = db.session.scalar(select(User).where(User.email == email))
    if user:
        return user, None
    password = secrets.token_urlsafe(9) + "1a"
    user = User(email=email, first_name=first, last_name=last, role=role,
                is_active=True, is_email_verified=True)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user, password


def catalog_is_empty() -> bool:
    return not db.session.scalar(select(func.count()).select_from(Course))


def seed_demo() -> dict:
    """Create the demo catalog; returns what was created (with new users' passwords)."""
    created = {"courses": 0, "users": {}}
    instructor, ipw = _get_or_create_user(DEMO_INSTRUCTOR, "Ada", "Lovelace", "instructor")
    student, spw = _get_or_create_user(DEMO_STUDENT, "Sam", "Student", "student")
    if ipw:
        created["users"][instructor.email] = ipw
    if spw:
        created["users"][student.email] = spw

    for m_pos, (m_name, m_desc, subs) in enumerate(CATALOG):
        master = db.session.scalar(select(MasterCategory).where(MasterCategory.name == m_name))
        if master is None:
            master = MasterCategory(name=m_name, slug=slugify(m_name), description=m_desc,
                                    position=m_pos)
            db.session.add(master)
            db.session.flush()
        for s_pos, (s_name, courses) in enumerate(subs):
            sub = db.session.scalar(select(Subcategory).where(
                Subcategory.master_category_id == master.id, Subcategory.name == s_name))
            if sub is None:
                sub = Subcategory(master_category_id=master.id, name=s_name,
                                  slug=slugify(s_name), position=s_pos)
                db.session.add(sub)
                db.session.flush()
            for title, summary, price, difficulty, modules in courses:
                slug = slugify(title)
                if db.session.scalar(select(Course.id).where(Course.slug == slug)):
                    continue
                course = Course(
                    title=title, slug=slug, short_description=summary,
                    description=f"{summary}\n\nA demo course of the AI First Academy catalog.",
                    price=price, currency="USD", difficulty=difficulty,
                    duration_hours=Decimal(2 * sum(len(ls) for _, ls in modules)),
                    learning_outcomes=[f"Understand {name.lower()}" for name, _ in modules],
                    language="English", mode_of_conduct="ONLINE", status="published",
                    published_at=utcnow(), subcategory_id=sub.id, instructor_id=instructor.id,
                )
                db.session.add(course)
                db.session.flush()
                for mod_pos, (mod_title, lessons) in enumerate(modules):
                    module = Module(course_id=course.id, title=mod_title, position=mod_pos)
                    db.session.add(module)
                    db.session.flush()
                    for l_pos, l_title in enumerate(lessons):
                        db.session.add(Lesson(
                            module_id=module.id, title=l_title, position=l_pos,
                            content=f"{l_title}: lesson notes.", duration_minutes=15,
                            video_url=f"https://videos.example.com/{slug}/{mod_pos}-{l_pos}.mp4",
                            is_preview=(mod_pos == 0 and l_pos == 0),
                        ))
                created["courses"] += 1
    db.session.commit()
    return created
