//! A TCP proxy in front of a registry that counts the HTTP requests passing
//! through it and how many of them carry `Authorization`: a mirror that
//! tells whether credentials reached it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts requests and `Authorization` headers on their way upstream.
pub struct AuthCountingProxy {
    pub addr: String,
    requests: Arc<AtomicUsize>,
    authorizations: Arc<AtomicUsize>,
}

impl AuthCountingProxy {
    pub fn start(upstream: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(AtomicUsize::new(0));
        let up = upstream.to_string();
        let (req, auth) = (requests.clone(), authorizations.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut client) = c else { continue };
                let Ok(mut server) = TcpStream::connect(&up) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (req, auth) = (req.clone(), auth.clone());
                // Upstream: forward, and look at each header line on the way.
                std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        for &b in &buf[..n] {
                            line.push(b);
                            if line.ends_with(b"\r\n") {
                                let l = String::from_utf8_lossy(&line).to_ascii_lowercase();
                                if l.ends_with(" http/1.1\r\n") {
                                    req.fetch_add(1, Ordering::SeqCst);
                                }
                                if l.starts_with("authorization:") {
                                    auth.fetch_add(1, Ordering::SeqCst);
                                }
                                line.clear();
                            }
                        }
                        if s2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        AuthCountingProxy {
            addr,
            requests,
            authorizations,
        }
    }

    /// HTTP requests seen.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests seen with an `Authorization` header.
    pub fn authorizations(&self) -> usize {
        self.authorizations.load(Ordering::SeqCst)
    }
}
