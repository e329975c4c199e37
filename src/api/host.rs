//! The Functions host's own routes: its start-up probe and the timer trigger.

use super::ApiError;
use super::limits::MAX_BODY;
use crate::app::AppState;
use crate::functions::{TimerInvocation, invocation_answer};
use axum::Json;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The host polls `GET /` every 25 ms until it answers; answer at once and touch
/// nothing (Redis and the identity provider may still be far away).
pub(super) fn probe() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `POST /timer-refresh`: one sweep, answered in the host's invocation format.
/// The host (`DefaultHttpWorkerService`) logs each `Logs` entry at information;
/// an empty `Outputs` and a null `ReturnValue` only at debug since
/// Azure/azure-functions-host#8874. A non-2xx answer fails the invocation and
/// its body is never read, so the reason of a sweep that could not run goes to
/// stderr as an error line, which the host does log.
pub(super) async fn timer(state: &AppState, body: Body) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("The invocation payload must be under {MAX_BODY} bytes"),
        )
    })?;
    let invocation: TimerInvocation = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid invocation",
            format!("The body must be the host's JSON invocation payload ({e})"),
        )
    })?;
    let past_due = invocation.is_past_due();
    Ok(match state.tokens.sweep().await {
        Ok(summary) => {
            let line = summary.line();
            tracing::info!(past_due, "{line}");
            Json(invocation_answer(line)).into_response()
        }
        Err(error) => {
            // Non-2xx fails the invocation: the host records it and the next tick retries.
            tracing::error!(%error, "sweep could not run");
            let mut answer = invocation_answer(format!("sweep could not run: {error}"));
            answer["error"] = json!("Token store unavailable");
            answer["message"] = json!("The sweep could not read the token store");
            (StatusCode::SERVICE_UNAVAILABLE, Json(answer)).into_response()
        }
    })
}
