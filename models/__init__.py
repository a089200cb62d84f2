"""Network definitions (teachers, students) and their registry.

Importing the package registers every built-in model::

    from models import build_student, list_students
    student = build_student("lstm", n_mels=40, n_frames=301, n_classes=12, hidden=64)
"""

from models.registry import (
    build_student,
    build_teacher,
    file_name,
    is_model_spec,
    is_user_student,
    list_students,
    list_teachers,
    model_size,
    register_student,
    register_teacher,
    register_user_student,
    resolve_student,
    student_fingerprint,
)
from models import students as _students  # noqa: F401  (registers the students)
from models import teachers as _teachers  # noqa: F401  (registers the teachers)

__all__ = [
    "build_student",
    "build_teacher",
    "file_name",
    "is_model_spec",
    "is_user_student",
    "list_students",
    "list_teachers",
    "model_size",
    "register_student",
    "register_teacher",
    "register_user_student",
    "resolve_student",
    "student_fingerprint",
]
