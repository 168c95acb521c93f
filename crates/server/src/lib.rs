//! lapsd-server: the OpenAI-compatible HTTP server (`lapsd serve`). Axum handlers validate
//! requests and relay events; one engine worker thread owns the engine and the scheduling core
//! (`lapsd_core::Scheduler` with the chosen policy, `gittins` by default) and runs the SD steps.
//!
//! Modules, one concern each (TGI's router shape): [`cli`] flags, [`api`] wire types and JSON
//! extraction, [`validation`], [`routes`], [`error`], [`engine_worker`] with [`inflight`],
//! [`backend`] (the engine seen by the worker), [`model_text`] (tokenizer, chat template,
//! streaming detokenization, stop strings), [`metrics`], [`edge`] (hosts, API keys, body
//! checks, CORS), [`listener`] (connections, timeouts, draining), [`server`] (start / shutdown).

pub mod api;
pub mod backend;
pub mod cli;
pub mod edge;
pub mod engine_worker;
pub mod error;
pub mod inflight;
pub mod listener;
pub mod metrics;
pub mod model_text;
pub mod routes;
pub mod sd_backend;
pub mod server;
pub mod validation;

pub use edge::{ApiKeys, HttpConfig};
pub use error::{ApiError, ServerError};
pub use server::{start, LoadedModel, ModelLoader, ServerConfig, ServerHandle};
