// Written as the student and admin SPAs use the API, against the client generated from
// /api/v1/openapi.json (tests/test_openapi_contract.py generates ./schema.ts next to a copy of
// this file and runs `tsc --strict`). A renamed or dropped field of an answer is a type error
// here, so it fails CI before it reaches a front end.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Schemas = components["schemas"];

const api = createClient<paths>({ baseUrl: "https://academy.example.com" });

function bearer(token: string) {
  return { headers: { Authorization: `Bearer ${token}` } };
}

function failure(error: Schemas["ErrorResponse"] | undefined, status: number): Error {
  return new Error(error ? `${status} ${error.code}: ${error.error}` : `HTTP ${status}`);
}

// --- a student -------------------------------------------------------------------------------

export interface Session {
  accessToken: string;
  refreshToken: string;
  expiresAt: number;
  user: { id: number; name: string; role: Schemas["UserOut"]["role"]; email: string };
}

// The browser's device token, kept across sign-ins: a device that signed in to an account
// before is not locked out by strangers' failed sign-ins.
let deviceToken: string | undefined;

export async function signIn(email: string, password: string): Promise<Session> {
  const { data, error, response } = await api.POST("/api/v1/auth/login", {
    body: { email, password, device_token: deviceToken ?? null },
  });
  if (response.status === 423 && error) {
    const until = error.details?.["locked_until"];
    throw new Error(`Too many failed sign-ins; try again after ${String(until)}`);
  }
  if (data === undefined) throw failure(error, response.status);
  if (data.device_token !== undefined) deviceToken = data.device_token;
  return {
    accessToken: data.access_token,
    refreshToken: data.refresh_token,
    expiresAt: Date.now() + data.expires_in * 1000,
    user: { id: data.user.id, name: data.user.full_name, role: data.user.role,
            email: data.user.email },
  };
}

// One refresh at a time: the refresh token rotates, and a spent one sent again ends the login.
export async function refreshSession(session: Session): Promise<Session> {
  const { data, error, response } = await api.POST("/api/v1/auth/refresh", {
    body: { refresh_token: session.refreshToken },
  });
  if (data === undefined) throw failure(error, response.status);
  return {
    ...session,
    accessToken: data.access_token,
    refreshToken: data.refresh_token,
    expiresAt: Date.now() + data.expires_in * 1000,
  };
}

export async function signOut(session: Session): Promise<void> {
  const { error, response } = await api.POST("/api/v1/auth/logout", {
    body: { refresh_token: session.refreshToken },
    ...bearer(session.accessToken),
  });
  if (!response.ok) throw failure(error, response.status);
}

export interface CatalogCard {
  id: number;
  title: string;
  price: string;
  free: boolean;
  instructor: string;
  category: string | null;
  awaitingReview: boolean;
}

export async function catalog(page: number, search?: string): Promise<{
  cards: CatalogCard[]; pages: number; hasNext: boolean;
}> {
  const { data, error, response } = await api.GET("/api/v1/public/get-courses", {
    params: { query: { page, per_page: 12, search, sort: "popular" } },
  });
  if (data === undefined) throw failure(error, response.status);
  return {
    cards: data.courses.map((course) => ({
      id: course.id,
      title: course.title,
      price: `${course.price.toFixed(2)} ${course.currency}`,
      free: course.is_free,
      instructor: course.instructor?.full_name ?? "",
      category: course.subcategory?.name ?? null,
      awaitingReview: course.awaiting_review,
    })),
    pages: data.pagination.pages,
    hasNext: data.pagination.has_next,
  };
}

export async function enroll(session: Session, courseId: number): Promise<number> {
  const { data, error, response } = await api.POST("/api/v1/enrollments", {
    body: { course_id: courseId },
    ...bearer(session.accessToken),
  });
  if (response.status === 402 && error) {
    // A paid course: the SPA starts a checkout instead.
    throw new Error(`pay first: ${JSON.stringify(error.details ?? {})}`);
  }
  if (data === undefined) throw failure(error, response.status);
  const enrollment = data.enrollment;
  console.log(enrollment.course.title, enrollment.progress_percent, enrollment.total_lessons);
  return enrollment.id;
}

export async function outline(session: Session, courseId: number) {
  const { data, error, response } = await api.GET("/api/v1/courses/{course_id}", {
    params: { path: { course_id: courseId } },
    ...bearer(session.accessToken),
  });
  if (data === undefined) throw failure(error, response.status);
  return data.course.modules.flatMap((module) =>
    module.lessons.map((lesson) => ({
      module: module.title,
      lesson: lesson.title,
      minutes: lesson.duration_minutes ?? 0,
      done: lesson.completed === true,
      files: lesson.resources.map((resource) => resource.download_url),
    })));
}

export interface Earned {
  number: string;
  verifyUrl: string;
  pdfUrl: string;
}

export async function postProgress(session: Session, enrollmentId: number,
                                   lessonId: number): Promise<Earned | null> {
  const { data, error, response } = await api.POST(
    "/api/v1/enrollments/{enrollment_id}/lessons/{lesson_id}/complete", {
      params: { path: { enrollment_id: enrollmentId, lesson_id: lessonId } },
      body: { completed: true, watch_time_seconds: 600 },
      ...bearer(session.accessToken),
    });
  if (data === undefined) throw failure(error, response.status);
  const progress: number = data.enrollment.progress_percent;
  const watched: number = data.lesson_progress.watch_time_seconds;
  console.log(`${progress}% (${data.enrollment.completed_lessons}/` +
              `${data.enrollment.total_lessons}), ${watched}s watched`);
  if (!data.course_completed || data.certificate === null) return null;
  return {
    number: data.certificate.certificate_number,
    verifyUrl: data.certificate.verify_url,
    pdfUrl: data.certificate.download_url,
  };
}

export interface Held extends Earned {
  credentialUrl: string;
  walletFileUrl: string;
  signedPdf: boolean;
  issuer: string;
  validFrom: string;
}

export async function readCertificate(session: Session, certificateId: number): Promise<Held> {
  const { data, error, response } = await api.GET("/api/v1/certificates/{certificate_id}", {
    params: { path: { certificate_id: certificateId } },
    ...bearer(session.accessToken),
  });
  if (data === undefined) throw failure(error, response.status);
  const certificate = data.certificate;
  if (certificate.status === "revoked") console.warn(`revoked ${certificate.revoked_at ?? ""}`);
  // The "add to wallet" button: the signed Open Badges credential, and what it says.
  const credential = certificate.credential;
  return { number: certificate.certificate_number, verifyUrl: certificate.verify_url,
           pdfUrl: certificate.download_url, credentialUrl: certificate.credential_url,
           walletFileUrl: certificate.credential_download_url, signedPdf: certificate.pdf_signed,
           issuer: credential.issuer.name, validFrom: credential.validFrom };
}

export async function checkCredential(pasted: Record<string, unknown>): Promise<string> {
  const { data, error, response } = await api.POST("/api/v1/credentials/verify", {
    body: { credential: pasted },
  });
  if (data === undefined) throw failure(error, response.status);
  const what = data.credential?.achievement ?? data.credential?.name ?? "this credential";
  return `${what}: ${data.result === "valid" ? "genuine" : data.message}`;
}

export async function myPayment(session: Session, paymentId: number) {
  const { data, error, response } = await api.GET("/api/v1/payments/{payment_id}", {
    params: { path: { payment_id: paymentId } },
    ...bearer(session.accessToken),
  });
  if (data === undefined) throw failure(error, response.status);
  const payment = data.payment;
  return {
    paid: `${payment.amount.toFixed(2)} ${payment.currency}`,
    refunded: payment.refund_status === "none" ? null :
      `${payment.refunded_amount.toFixed(2)} ${payment.currency} (${payment.refund_status})`,
    creditNotes: payment.refunds.map((refund) => refund.credit_note_url),
  };
}

export async function verifyPublicly(number: string): Promise<string> {
  const { data, error, response } = await api.GET("/api/v1/certificates/verify/{number}", {
    params: { path: { number } },
  });
  if (data === undefined) return error && "valid" in error ? "unknown certificate" :
    `HTTP ${response.status}`;
  return `${data.holder_name} completed ${data.course_title} on ${data.completion_date}` +
    (data.valid ? "" : " (revoked)");
}

// --- an admin --------------------------------------------------------------------------------

export async function dashboard(session: Session) {
  const { data, error, response } = await api.GET("/api/v1/admin/dashboard",
                                                  bearer(session.accessToken));
  if (data === undefined) throw failure(error, response.status);
  return {
    students: data.users.by_role.student.total,
    activeUsers: data.users.active,
    published: data.courses.by_status.published,
    completions: data.enrollments.completed,
    revenueThisMonth: data.revenue.this_month.map((r) => `${r.amount.toFixed(2)} ${r.currency}`),
    latestPayment: data.recent.payments[0]?.user_email ?? null,
    latestSignup: data.recent.registrations[0]?.created_at ?? null,
  };
}

export interface RefundDecision {
  summary: string;
  inFlight: boolean;
  gatewayRefundId: string | null;
  creditNote: string | null;
  replayed: boolean;
}

// `key` is kept with the click, so a retry after a lost answer gets the same refund back.
export async function approveOldestRefund(session: Session,
                                          key: string): Promise<RefundDecision | null> {
  const pending = await api.GET("/api/v1/admin/refund-requests", {
    params: { query: { status: "pending", page: 1, per_page: 1 } },
    ...bearer(session.accessToken),
  });
  if (pending.data === undefined) throw failure(pending.error, pending.response.status);
  const oldest = pending.data.refund_requests[0];
  if (oldest === undefined) return null;
  const { data, error, response } = await api.PUT("/api/v1/admin/refund-requests/{request_id}", {
    params: { path: { request_id: oldest.id }, header: { "Idempotency-Key": key } },
    body: { action: "approve", note: `refund of ${oldest.amount.toFixed(2)}` },
    ...bearer(session.accessToken),
  });
  if (data === undefined) throw failure(error, response.status);
  const refund = data.refund ?? null;
  return {
    summary: `${data.message}: ${data.refund_request.status} at ${data.refund_request.processed_at}`,
    inFlight: response.status === 202,
    gatewayRefundId: data.refund_request.gateway_refund_id,
    creditNote: refund === null ? null :
      `${refund.credit_note_number} (${refund.amount.toFixed(2)} ${refund.currency}): ` +
      refund.credit_note_url,
    replayed: response.headers.get("Idempotent-Replayed") === "true",
  };
}
