//! Payments and alerts outside the process: the payment provider (Stripe),
//! its webhooks' signatures, and the alerts Headroom sends to the product.

pub mod alerts;
pub mod provider;
pub mod stripe;
