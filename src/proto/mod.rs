//! The sans-IO protocol core: bytes in, events out. Nothing here knows about sockets,
//! threads or clocks (the caller passes `now`).
#![forbid(unsafe_code)]
