//! The `rota` binary's library: configuration, the REST API, the roles, `rota dev` and
//! `rota plan`. Kept as a library so that tests drive exactly what the binary runs.

pub mod admin;
pub mod api;
pub mod config;
pub mod crontab;
pub mod destinations;
pub mod dev;
pub mod handlers;
pub mod plan;
pub mod roles;
pub mod status;
pub mod tokens;
