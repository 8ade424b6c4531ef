//! A static file server on 127.0.0.1 for download tests: HTTP/1.1 GET with `Range: bytes=N-`
//! (206 with Content-Range, 416 past the end), a switch to ignore ranges as many servers do,
//! and a knob that cuts the connection mid-file the way a broken network does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path, e.g. `/m/model.safetensors`.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// path -> (bytes of the body to send before closing, how many more requests to cut)
    cuts: HashMap<String, (usize, usize)>,
    log: Vec<Request>,
}

/// Serves files from memory; its threads end with the process.
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    ranges: Arc<AtomicBool>,
}

impl FileServer {
    /// Start serving; unknown paths get 404.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state: Arc<Mutex<State>> = Arc::default();
        let ranges = Arc::new(AtomicBool::new(true));
        let (s, r) = (state.clone(), ranges.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &s, r.load(Ordering::SeqCst));
                });
            }
        });
        FileServer {
            addr,
            state,
            ranges,
        }
    }

    /// Serve `body` at `path` (replacing what was there).
    pub fn file(&self, path: &str, body: impl Into<Vec<u8>>) -> &Self {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body.into());
        self
    }

    /// The next `times` requests for `path` announce the full length, send only `after` bytes
    /// of the body, then close the connection.
    pub fn cut(&self, path: &str, after: usize, times: usize) -> &Self {
        self.state
            .lock()
            .unwrap()
            .cuts
            .insert(path.to_string(), (after, times));
        self
    }

    /// Honour `Range` headers (the default) or ignore them and send whole files with 200.
    pub fn ranges(&self, on: bool) -> &Self {
        self.ranges.store(on, Ordering::SeqCst);
        self
    }

    /// `http://127.0.0.1:port`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forget the requests received so far.
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, ranges: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut range = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("range") {
                    range = Some(value.trim().to_string());
                }
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let (body, cut) = {
            let mut s = state.lock().unwrap();
            s.log.push(Request {
                path: path.clone(),
                range: range.clone(),
            });
            let body = s.files.get(&path).cloned();
            let cut = match s.cuts.get_mut(&path) {
                Some((after, times)) if *times > 0 => {
                    *times -= 1;
                    Some(*after)
                }
                _ => None,
            };
            (body, cut)
        };
        let Some(body) = body else {
            let msg = b"404 page not found";
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                msg.len()
            )?;
            out.write_all(msg)?;
            continue;
        };
        let start = match range.as_deref().filter(|_| ranges) {
            Some(r) => match r
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if n < body.len() => Some(n),
                _ => {
                    write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n\r\n",
                        body.len()
                    )?;
                    continue;
                }
            },
            None => None,
        };
        let slice = &body[start.unwrap_or(0)..];
        match start {
            Some(n) => write!(
                out,
                "HTTP/1.1 206 Partial Content\r\nAccept-Ranges: bytes\r\nContent-Range: bytes {n}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                body.len() - 1,
                body.len(),
                slice.len()
            )?,
            None => write!(
                out,
                "HTTP/1.1 200 OK\r\n{}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                if ranges { "Accept-Ranges: bytes\r\n" } else { "" },
                slice.len()
            )?,
        }
        match cut {
            Some(after) => {
                out.write_all(&slice[..after.min(slice.len())])?;
                out.flush()?;
                // Closing with bytes still owed is what a dropped connection looks like.
                return out.shutdown(std::net::Shutdown::Both);
            }
            None => out.write_all(slice)?,
        }
        out.flush()?;
    }
}
