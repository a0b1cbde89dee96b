//! Reading a JSON body: bounded in size (413 beyond it), any content type
//! (`curl -d` sends a form type), and errors that name the field at fault.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use headroom_core::limits::HTTP_BODY_BYTES_MAX;

use super::error::ApiError;

/// A request body parsed from JSON.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Json<T>, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {HTTP_BODY_BYTES_MAX} bytes"),
            )
        };
        let bytes = match Limited::new(request.into_body(), HTTP_BODY_BYTES_MAX).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
            Err(error) => return Err(ApiError::malformed(format!("the body could not be read: {error}"))),
        };
        parse(&bytes).map(Json)
    }
}

/// Parses JSON, naming the field of a shape error (`decisions[2].quantity`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::malformed("the body is empty; a JSON object is expected"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() && path != "." && !path.is_empty() {
            ApiError::malformed(format!("{path}: {inner}")).on_field(path)
        } else {
            ApiError::malformed(format!("the body is not valid JSON: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::malformed(format!("the body has more after the JSON value: {error}")))?;
    Ok(value)
}
