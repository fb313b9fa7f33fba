"""Authentication: registration (phone code or direct), login, Google, tokens, passwords,
the profile. Both route sets of the contract; aliases are stacked on the same view."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from flask import Blueprint, request
from flask_jwt_extended import get_jwt, jwt_required, verify_jwt_in_request
from pydantic import Field, model_validator
from spectree import Response
from typing_extensions import NotRequired, TypedDict

from auth import current_user, login_required
from models import db
from services import auth_service, file_service, jobs
from utils.extensions import limiter
from utils.pipeline.client_address import client_ip
from utils.pipeline.rate_limits import config_limit
from utils.responses import MessageResponse, UserOut, UserResponse
from utils.validation import StrictModel, UploadFile, document, errors, json_body, validate
from utils.validators import Email, PersonName, Phone, SafeText, Url

bp = Blueprint("auth", __name__)


# --- models -----------------------------------------------------------------------------------

Password = Field(min_length=1, max_length=128)
OtpCode = Field(pattern=r"^\d{4,10}$")


class PhoneIn(StrictModel):
    phone_number: Phone


class VerifyPhoneIn(PhoneIn):
    code: str = OtpCode


class RegisterIn(StrictModel):
    email: Email
    password: str = Password
    first_name: PersonName
    last_name: PersonName
    role: Literal["student", "instructor"] = "student"
    phone_number: Phone | None = None


class RegisterWithCodeIn(RegisterIn):
    phone_number: Phone
    code: str = OtpCode


class LoginIn(StrictModel):
    email: str = Field(min_length=1, max_length=254)
    password: str = Password
    device_token: str | None = Field(
        None, max_length=200,
        description="The `device_token` of this browser's earlier sign-ins, kept by the SPA: "
                    "a device that signed in before is not locked out by others' failures")


class RefreshIn(StrictModel):
    refresh_token: str | None = Field(
        None, min_length=1, max_length=8192,
        description="The refresh token; or send it as `Authorization: Bearer <refresh_token>`")


class GoogleIn(StrictModel):
    id_token: str = Field(min_length=1, max_length=8192)
    client_type: Literal["student", "admin"] = "student"


class LogoutIn(StrictModel):
    refresh_token: str | None = Field(None, max_length=8192)


class ResetRequestIn(StrictModel):
    email: str = Field(min_length=1, max_length=254)


class ResetVerifyIn(StrictModel):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Password


class ResetByLinkIn(StrictModel):
    password: str = Password


class ChangePasswordIn(StrictModel):
    current_password: str = Password
    new_password: str = Password


class ProfileIn(StrictModel):
    first_name: PersonName | None = None
    last_name: PersonName | None = None
    bio: SafeText | None = Field(None, max_length=2000)
    headline: SafeText | None = Field(None, max_length=200)
    date_of_birth: date | None = None
    country: SafeText | None = Field(None, max_length=100)
    city: SafeText | None = Field(None, max_length=100)
    website: Url | None = None

    @model_validator(mode="after")
    def names_cannot_be_cleared(self):
        for name in ("first_name", "last_name"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be empty")
        return self


class PictureForm(StrictModel):
    """A profile picture."""

    file: UploadFile = Field(description="png, jpg, jpeg, gif or webp (the field `picture` is "
                                         "read too)")


class TokensResponse(TypedDict):
    """A signed-in session: send `Authorization: Bearer <access_token>` with every request;
    exchange the refresh token at /auth/refresh when the access token expires."""

    access_token: str
    refresh_token: str
    token_type: Annotated[Literal["Bearer"], Field(examples=["Bearer"])]
    expires_in: Annotated[int, Field(description="Seconds the access token lives",
                                     examples=[900])]
    user: UserOut
    message: NotRequired[str]
    device_token: NotRequired[Annotated[str, Field(
        description="Sign-in answers only: keep it (long-lived, per browser) and send it back "
                    "as `device_token` with the next sign-ins to this account")]]


class AccessTokenResponse(TypedDict):
    """A new access token and a new refresh token: the refresh token rotates on every refresh,
    and the one sent is spent (sending it again ends the whole login)."""

    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, Field(description="Seconds the access token lives")]


# --- registration -----------------------------------------------------------------------------

@bp.post("/register/send-otp")
@bp.post("/send-token")
@config_limit("RATE_LIMIT_REGISTER")
@validate(json=PhoneIn, resp=Response(HTTP_200=MessageResponse, **errors(409, 429, 503)), tags=["auth"])
def send_otp():
    """Send a one-time code to a phone number (E.164)."""
    auth_service.send_registration_code(json_body().phone_number)
    db.session.commit()
    return {"message": "A verification code has been sent"}


@bp.post("/register/verify-otp")
@config_limit("RATE_LIMIT_REGISTER")
@validate(json=RegisterWithCodeIn, resp=Response(HTTP_201=TokensResponse, **errors(409, 429, 503)),
          tags=["auth"])
def register_with_code():
    """Check the phone code and create the account in one step."""
    body = json_body()
    user = auth_service.register_with_code(
        phone_number=body.phone_number, code=body.code, email=body.email,
        password=body.password, first_name=body.first_name, last_name=body.last_name,
        role=body.role)
    tokens = auth_service.issue_tokens(user)
    db.session.commit()
    return {"message": "Account created", **tokens}, 201


@bp.post("/verify-otp")
@config_limit("RATE_LIMIT_REGISTER")
@validate(json=VerifyPhoneIn, resp=Response(HTTP_200=MessageResponse, **errors(429, 503)),
          tags=["auth"])
def verify_otp():
    """Check a phone code; the phone may then register within the verification window."""
    body = json_body()
    auth_service.verify_phone(body.phone_number, body.code)
    db.session.commit()
    return {"message": "Phone number verified"}


@bp.post("/register")
@config_limit("RATE_LIMIT_REGISTER")
@validate(json=RegisterIn, resp=Response(HTTP_201=UserResponse, **errors(409, 429)),
          tags=["auth"])
def register():
    """Create an account (with OTP_REQUIRED, after the phone was verified)."""
    body = json_body()
    user = auth_service.register(
        email=body.email, password=body.password, first_name=body.first_name,
        last_name=body.last_name, role=body.role, phone_number=body.phone_number)
    db.session.commit()
    return {"message": "User created successfully", "user": user.to_dict(private=True)}, 201


# --- login and tokens -------------------------------------------------------------------------

@bp.post("/login")
@config_limit("RATE_LIMIT_LOGIN")
@validate(json=LoginIn, resp=Response(HTTP_200=TokensResponse, **errors(401, 423, 429)),
          tags=["auth"])
def login():
    """E-mail and password; 5 failures lock the source for 30 minutes, not the trusted ones.

    Five failed sign-ins to an account from one source (this browser's known device token,
    else the address) lock that source out of the account for 30 minutes (423
    `account_locked`, Retry-After); five from sources the account does not trust lock it for
    all of them, while a device or address that signed in to it before still signs in. An
    e-mail without an account answers exactly alike (401 `invalid_credentials`, then 423), and
    so does a deactivated account, right password or wrong. A completed password reset or an
    admin lifts the locks. The answer's `device_token` is for the next sign-ins."""
    body = json_body()
    ip = client_ip()
    user, device_token = auth_service.authenticate(body.email, body.password, ip,
                                                   body.device_token)
    tokens = auth_service.issue_tokens(user, ip)
    db.session.commit()
    return {**tokens, "device_token": device_token}


@bp.post("/google")
@config_limit("RATE_LIMIT_LOGIN")
@validate(json=GoogleIn, resp=Response(HTTP_200=TokensResponse, **errors(401, 403, 409, 429, 503)),
          tags=["auth"])
def google():
    """Sign in with a Google ID token from the student or the admin SPA."""
    body = json_body()
    user = auth_service.google_login(body.id_token, body.client_type)
    tokens = auth_service.issue_tokens(user, client_ip())
    db.session.commit()
    return tokens


@bp.post("/refresh")
@config_limit("RATE_LIMIT_REFRESH")
@validate(json=RefreshIn, resp=Response(HTTP_200=AccessTokenResponse, **errors(401, 429)),
          tags=["auth"], security={"bearer": []})
def refresh():
    """A new access token and a new refresh token, for a refresh token (it rotates).

    Send the refresh token as `{"refresh_token": "..."}` or as `Authorization: Bearer
    <refresh_token>` (the body wins when both are sent). The answer's `refresh_token` replaces
    the one sent, which is spent: sending a spent refresh token again is taken for theft and
    ends the whole login, the newest tokens included (401 `refresh_token_reused`), so a client
    refreshes one request at a time."""
    verify_jwt_in_request(refresh=True,
                          locations=["json"] if json_body().refresh_token else ["headers"])
    tokens = auth_service.refresh_tokens(get_jwt(), current_user(), client_ip())
    db.session.commit()
    return tokens


@bp.post("/logout")
@jwt_required(verify_type=False)
@validate(json=LogoutIn, resp=Response(HTTP_200=MessageResponse, **errors(401)), tags=["auth"],
          security={"bearer": []})
def logout():
    """End the login of the presented token, access or refresh: both its tokens stop working.

    A refresh token of the same user sent as `refresh_token` in the body ends its login too."""
    body = json_body() if request.content_length else None
    auth_service.logout(get_jwt(), body.refresh_token if body else None)
    db.session.commit()
    return {"message": "Logged out"}


# --- passwords --------------------------------------------------------------------------------

@bp.post("/password-reset/request")
@bp.post("/forgot-password")
@config_limit("RATE_LIMIT_PASSWORD_RESET_REQUEST")
@validate(json=ResetRequestIn, resp=Response(HTTP_200=MessageResponse, **errors(429)), tags=["auth"])
def request_password_reset():
    """E-mail a reset link; the answer and its timing are the same whether or not the account
    exists (the e-mail is a background job)."""
    job = auth_service.request_password_reset(json_body().email)
    db.session.commit()
    jobs.launch(job)
    return {"message": "If an account exists for this e-mail, a reset link has been sent"}


@bp.post("/password-reset/verify")
@config_limit("RATE_LIMIT_PASSWORD_RESET_VERIFY")
@validate(json=ResetVerifyIn, resp=Response(HTTP_200=MessageResponse, **errors(429)), tags=["auth"])
def reset_password():
    """Set a new password with a reset token; every earlier token of the user is revoked."""
    body = json_body()
    auth_service.reset_password(body.token, body.new_password)
    db.session.commit()
    return {"message": "Your password has been reset; log in with the new one"}


@bp.post("/reset-password/<string:token>")
@config_limit("RATE_LIMIT_PASSWORD_RESET_VERIFY")
@validate(json=ResetByLinkIn, resp=Response(HTTP_200=MessageResponse, **errors(429)), tags=["auth"])
def reset_password_by_link(token: str):
    """The API documentation's form of the reset: the token in the path."""
    auth_service.reset_password(token[:200], json_body().password)
    db.session.commit()
    return {"message": "Your password has been reset; log in with the new one"}


@bp.post("/change-password")
@login_required
@validate(json=ChangePasswordIn, resp=Response(HTTP_200=TokensResponse, **errors(401)),
          tags=["auth"], security={"bearer": []})
def change_password():
    """Change the password; other sessions end, and fresh tokens are returned."""
    body = json_body()
    tokens = auth_service.change_password(current_user(), body.current_password,
                                          body.new_password)
    db.session.commit()
    return {"message": "Password changed", **tokens}


# --- profile ----------------------------------------------------------------------------------

@bp.get("/profile")
@login_required
@validate(resp=Response(HTTP_200=UserResponse, **errors(401)), tags=["auth", "users"],
          security={"bearer": []})
def get_profile():
    """The signed-in user's own profile."""
    return {"user": current_user().to_dict(private=True)}


@bp.put("/profile")
@login_required
@validate(json=ProfileIn, resp=Response(HTTP_200=UserResponse, **errors(401)),
          tags=["auth", "users"], security={"bearer": []})
def update_profile():
    """Update the safe profile fields (not e-mail, phone, role or status)."""
    user = auth_service.update_profile(current_user(), json_body().model_dump(exclude_unset=True))
    db.session.commit()
    return {"message": "Profile updated", "user": user.to_dict(private=True)}


@bp.post("/profile/picture")
@limiter.limit("10 per hour")
@login_required
@document(form=PictureForm, resp=Response(HTTP_200=UserResponse,
                                          **errors(401, 413, 415, 422, 429)),
          tags=["auth", "users", "files"], security={"bearer": []})
def upload_profile_picture():
    """Upload a profile picture (multipart field `file`: png, jpg, jpeg, gif or webp)."""
    user = current_user()
    upload = request.files.get("file") or request.files.get("picture")
    replaced = auth_service.set_profile_picture(user, upload)
    db.session.commit()
    file_service.delete(replaced)
    return {"message": "Profile picture updated", "user": user.to_dict(private=True)}
