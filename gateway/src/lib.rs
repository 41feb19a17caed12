//! The secure file-exchange gateway: HTTPS into encrypted storage with a tamper-evident
//! audit trail.
//!
//! Map (see ARCHITECTURE.md): [`https`] is the frontend; [`transfer`] is the one path to
//! storage (authorise → audit → stream → audit); [`storage`] hides backends behind a trait;
//! [`audit`] writes and verifies the trail; [`auth`] and [`path`] decide who may touch what;
//! [`server`] assembles it all from the configuration.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod accounts;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod defender;
pub mod digest;
pub mod https;
pub mod keyring;
pub mod listener;
pub mod metrics;
pub mod mfa;
pub mod path;
pub mod reload;
pub mod secrets;
pub mod server;
pub mod sftp;
pub mod storage;
pub mod transfer;

pub use server::{check_files, prepare_development, DevMaterial, Gateway, Listeners, StartupError};
