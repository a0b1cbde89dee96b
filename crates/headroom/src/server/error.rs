//! One error shape for every route: `{"error": {"code", "message", "field"?}}`
//! with a stable code and the status that fits. Internal details go to the
//! log, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use headroom_core::CoreError;
use headroom_store::{Refusal, StoreError};

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `malformed_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `unknown_subject`, `unknown_account`,
    /// `unknown_reservation`, `method_not_allowed`, `idempotency_conflict`,
    /// `conflict`, `payload_too_large`, `invalid_value`, `capacity_exceeded`,
    /// `storage_unavailable`, `internal`.
    pub code: &'static str,
    /// For people: what is wrong, naming the value.
    pub message: String,
    /// The request field at fault, as a path (`decisions[3].quantity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    pub fn on_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", message)
    }

    /// A well-formed request with a value that cannot be used.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", format!("{field}: {message}")).on_field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Prefixes the field path, for an error inside one item of a batch.
    pub fn within(mut self, prefix: &str) -> ApiError {
        if let Some(field) = &self.field {
            self.message = format!("{prefix}.{}", self.message);
            self.field = Some(format!("{prefix}.{field}"));
        }
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code, message: self.message.clone(), field: self.field.clone() } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> ApiError {
        let message = error.to_string();
        let status = |status, code| ApiError::new(status, code, message.clone());
        match &error {
            CoreError::UnknownAccount(_) => status(StatusCode::NOT_FOUND, "unknown_account"),
            CoreError::UnknownSubject(_) => status(StatusCode::NOT_FOUND, "unknown_subject"),
            CoreError::UnknownReservation(_) => status(StatusCode::NOT_FOUND, "unknown_reservation"),
            CoreError::UnknownFeature(_) => ApiError::invalid("feature", &message),
            CoreError::UnknownPlan(_) => ApiError::invalid("plan", &message),
            CoreError::InvalidQuantity { .. } => ApiError::invalid("quantity", &message),
            CoreError::InvalidAttributes(_)
            | CoreError::MissingAttribute { .. }
            | CoreError::UnknownAttributeValue { .. } => ApiError::invalid("attributes", &message),
            CoreError::InvalidLifetime(_) => ApiError::invalid("lifetime_s", &message),
            CoreError::InvalidGrant(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message.clone())
            }
            CoreError::IdempotencyKeyRequired => ApiError::invalid("idempotency_key", &message),
            CoreError::IdempotencyConflict(_) => status(StatusCode::CONFLICT, "idempotency_conflict"),
            CoreError::AccountExists(_)
            | CoreError::SubjectInOtherAccount { .. }
            | CoreError::GrantExists(_)
            | CoreError::TooManyGrants => status(StatusCode::CONFLICT, "conflict"),
            CoreError::UnknownPayment(_) => status(StatusCode::NOT_FOUND, "unknown_checkout"),
            CoreError::PaymentMismatch(_) => status(StatusCode::CONFLICT, "conflict"),
            CoreError::PurchasesNotOffered => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "purchases_not_offered", message.clone())
            }
            CoreError::InvalidAutoRecharge(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message.clone())
            }
            CoreError::IdempotencyCapacity | CoreError::TooManyReservations | CoreError::TooManyCheckouts => {
                status(StatusCode::TOO_MANY_REQUESTS, "capacity_exceeded")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Refused(Refusal::Core(error)) => error.into(),
            StoreError::Refused(Refusal::Settle(error)) => {
                tracing::error!(%error, "a settlement command reached the API");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
            StoreError::Uncertain(reason) => {
                tracing::error!(%reason, "storage failed while committing");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage failed while recording this; it may or may not have happened: retry with the same idempotency key, which returns the original answer if it was recorded",
                )
            }
            error => {
                tracing::error!(%error, "storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is unavailable; nothing was recorded, retry later",
                )
            }
        }
    }
}
