//! The do-it-yourself baseline: Debian's `redis-server` on loopback with a
//! Lua script doing the same waterfall per request: an idempotency key, two
//! windows (5 hours and a week), then an idempotent credit debit with a
//! ledger append. Run without persistence, and with `appendfsync always`
//! (every write synced before its answer, as Headroom does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// KEYS: idempotency key, window 1, window 2, wallet, ledger.
/// ARGV: quantity, capacity 1, seconds 1, capacity 2, seconds 2, price, key.
pub const WATERFALL: &str = r#"
local done = redis.call('GET', KEYS[1])
if done then return done end
local quantity = tonumber(ARGV[1])
local used1 = tonumber(redis.call('GET', KEYS[2]) or '0')
local used2 = tonumber(redis.call('GET', KEYS[3]) or '0')
local room = math.max(0, math.min(tonumber(ARGV[2]) - used1, tonumber(ARGV[4]) - used2))
local covered = math.min(quantity, room)
local cost = (quantity - covered) * tonumber(ARGV[6])
local balance = tonumber(redis.call('GET', KEYS[4]) or '0')
local answer
if cost > balance then
  answer = 'deny:' .. (cost - balance)
else
  if covered > 0 then
    redis.call('INCRBY', KEYS[2], covered)
    redis.call('EXPIRE', KEYS[2], ARGV[3], 'NX')
    redis.call('INCRBY', KEYS[3], covered)
    redis.call('EXPIRE', KEYS[3], ARGV[5], 'NX')
  end
  if cost > 0 then
    redis.call('DECRBY', KEYS[4], cost)
    redis.call('RPUSH', KEYS[5], ARGV[7] .. ':' .. cost)
  end
  answer = 'allow:' .. covered .. ':' .. cost
end
redis.call('SET', KEYS[1], answer, 'EX', 86400)
return answer
"#;

/// A `redis-server` this bench started on a free loopback port.
pub struct RedisServer {
    child: Child,
    pub address: String,
    directory: PathBuf,
}

impl RedisServer {
    pub fn start(fsync_always: bool) -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let directory = std::env::temp_dir().join(format!("headroom-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&directory).map_err(|error| error.to_string())?;
        let persistence: &[&str] =
            if fsync_always { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--protected-mode", "no"])
            .args(persistence)
            .arg("--dir")
            .arg(&directory)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start redis-server (apt-get install redis-server): {error}"))?;
        Ok(RedisServer { child, address: format!("127.0.0.1:{port}"), directory })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// One command in RESP.
pub fn encode(arguments: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", arguments.len()).as_bytes());
    for argument in arguments {
        out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP reply, as far as the bench needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Text(Vec<u8>),
    Integer(i64),
    Error(String),
    Nil,
    Array(Vec<Reply>),
}

/// Parses one reply from the front of `buffer`: the reply and its length,
/// or `None` when more bytes are needed.
pub fn parse(buffer: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(line_end) = buffer.windows(2).position(|window| window == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buffer[1..line_end]).map_err(|_| "a RESP line that is not text".to_string())?;
    let after = line_end + 2;
    let number = || line.parse::<i64>().map_err(|_| format!("a RESP length that is not a number: {line:?}"));
    match buffer.first() {
        Some(b'+') => Ok(Some((Reply::Text(line.as_bytes().to_vec()), after))),
        Some(b'-') => Ok(Some((Reply::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Reply::Integer(number()?), after))),
        Some(b'$') => {
            let length = number()?;
            if length < 0 {
                return Ok(Some((Reply::Nil, after)));
            }
            let end = after + length as usize;
            if buffer.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Text(buffer[after..end].to_vec()), end + 2)))
        }
        Some(b'*') => {
            let count = number()?;
            let mut items = Vec::new();
            let mut position = after;
            for _ in 0..count.max(0) {
                match parse(&buffer[position..])? {
                    Some((item, used)) => {
                        items.push(item);
                        position += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), position)))
        }
        _ => Err(format!("not a RESP reply: {:?}", String::from_utf8_lossy(&buffer[..line_end]))),
    }
}

/// Sends `request` and reads one reply.
pub async fn call(stream: &mut TcpStream, request: &[u8], buffer: &mut Vec<u8>) -> Result<Reply, String> {
    stream.write_all(request).await.map_err(|error| format!("sending to redis: {error}"))?;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((reply, used)) = parse(buffer)? {
            buffer.drain(..used);
            return Ok(reply);
        }
        let read = stream.read(&mut chunk).await.map_err(|error| format!("receiving from redis: {error}"))?;
        if read == 0 {
            return Err("redis closed the connection".to_string());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Connects, retrying while the server starts (bounded).
pub async fn connect(address: &str) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..200 {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|error| error.to_string())?;
                return Ok(stream);
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Err(format!("redis at {address} did not come up: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Reply::Text(b"OK".to_vec()), 5)));
        assert_eq!(parse(b"$5\r\nallow\r\n").unwrap(), Some((Reply::Text(b"allow".to_vec()), 11)));
        assert_eq!(parse(b"$5\r\nall").unwrap(), None);
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Nil, 5)));
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Reply::Integer(42), 5)));
        assert_eq!(parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap().unwrap().1, 15);
        assert!(matches!(parse(b"-ERR no\r\n").unwrap(), Some((Reply::Error(_), 9))));
        let mut out = Vec::new();
        encode(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
