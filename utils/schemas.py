"""Request models that more than one blueprint declares: the catalog's list query (courses,
public catalog, an instructor's own courses) and the form that sends a credential to check
(the credentials API and the verify page)."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from models import COURSE_STATUSES, DIFFICULTIES, MODES_OF_CONDUCT
from utils.errors import ValidationError
from utils.validation import PageQuery, StrictModel, UploadFile

Mode = Annotated[Literal[MODES_OF_CONDUCT],
                 BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v)]


class CourseListQuery(PageQuery):
    category_id: int | None = Field(None, ge=1)
    subcategory_id: int | None = Field(None, ge=1)
    search: str | None = Field(None, max_length=200)
    difficulty: Literal[DIFFICULTIES] | None = None
    min_price: Decimal | None = Field(None, ge=0)
    max_price: Decimal | None = Field(None, ge=0)
    is_free: bool | None = None
    language: str | None = Field(None, max_length=50)
    mode_of_conduct: Mode | None = None
    sort: Literal["newest", "oldest", "price_asc", "price_desc", "title", "popular"] = "newest"

    def filters(self) -> dict:
        """The catalog query's keyword arguments (services/catalog_service.course_query)."""
        if self.min_price is not None and self.max_price is not None and \
                self.min_price > self.max_price:
            raise ValidationError("min_price is above max_price",
                                  details={"min_price": "must not exceed max_price"})
        return {"category_id": self.category_id, "subcategory_id": self.subcategory_id,
                "search": self.search, "difficulty": self.difficulty,
                "min_price": self.min_price, "max_price": self.max_price,
                "is_free": self.is_free, "language": self.language,
                "mode_of_conduct": self.mode_of_conduct, "sort": self.sort}


class TeachingQuery(CourseListQuery):
    status: Literal[COURSE_STATUSES] | None = None


class CredentialCheckForm(StrictModel):
    """A credential to check: pasted as JSON text, or a file (the credential's JSON or a
    certificate PDF). A file wins over the pasted text."""

    credential: str | None = Field(None, description="The credential's JSON, pasted")
    # Optional, described as the binary it is when sent (not as "binary or null").
    file: UploadFile = Field(None, description="The credential (JSON) or a certificate PDF, at "
                                               "most 5 MB",
                             json_schema_extra=lambda schema: schema.pop("default", None))
