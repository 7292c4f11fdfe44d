//! A console command's answer as protocol messages: RowDescription,
//! DataRows and CommandComplete (text format, as PgBouncer's console).

use bytes::{BufMut, BytesMut};

/// A column's type as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
}

impl Kind {
    fn oid(self) -> u32 {
        match self {
            Kind::Text => 25, // text
            Kind::Int => 20,  // int8
        }
    }

    fn size(self) -> i16 {
        match self {
            Kind::Text => -1,
            Kind::Int => 8,
        }
    }
}

/// A result set being built.
pub struct Rows {
    columns: &'static [(&'static str, Kind)],
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    pub fn new(columns: &'static [(&'static str, Kind)]) -> Rows {
        Rows {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; one value per column (`None`: NULL).
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the whole answer, ending with CommandComplete `tag`.
    pub fn write(&self, out: &mut BytesMut, tag: &str) {
        framed(out, b'T', |o| {
            o.put_i16(self.columns.len() as i16);
            for (name, kind) in self.columns {
                put_cstr(o, name);
                o.put_u32(0); // table oid
                o.put_i16(0); // column number
                o.put_u32(kind.oid());
                o.put_i16(kind.size());
                o.put_i32(-1); // type modifier
                o.put_i16(0); // text format
            }
        });
        for row in &self.rows {
            framed(out, b'D', |o| {
                o.put_i16(row.len() as i16);
                for value in row {
                    match value {
                        Some(v) => {
                            o.put_i32(v.len() as i32);
                            o.put_slice(v.as_bytes());
                        }
                        None => o.put_i32(-1),
                    }
                }
            });
        }
        command_complete(out, tag);
    }
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    framed(out, b'C', |o| put_cstr(o, tag));
}

/// A NoticeResponse-free empty query's answer.
pub fn empty_query(out: &mut BytesMut) {
    framed(out, b'I', |_| {});
}

fn framed(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    f(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // Values come from the config and the proxy; a NUL would end the
    // string early, so it is replaced.
    for b in s.bytes() {
        out.put_u8(if b == 0 { b'?' } else { b });
    }
    out.put_u8(0);
}

/// Some text.
pub fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

/// A number.
pub fn int(n: impl std::fmt::Display) -> Option<String> {
    Some(n.to_string())
}

/// A time as SHOW CLIENTS/SERVERS print it (RFC 3339, UTC, seconds).
pub fn time(t: std::time::SystemTime) -> Option<String> {
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn rows_parse_back() {
        static COLS: [(&str, Kind); 2] = [("name", Kind::Text), ("n", Kind::Int)];
        let mut rows = Rows::new(&COLS);
        rows.push(vec![text("a"), int(1)]);
        rows.push(vec![None, int(2)]);
        let mut out = BytesMut::new();
        rows.write(&mut out, "SHOW");
        assert!(matches!(
            Message::parse(&mut out),
            Ok(Some(Message::RowDescription(_)))
        ));
        assert!(matches!(
            Message::parse(&mut out),
            Ok(Some(Message::DataRow(_)))
        ));
        assert!(matches!(
            Message::parse(&mut out),
            Ok(Some(Message::DataRow(_)))
        ));
        let Ok(Some(Message::CommandComplete(c))) = Message::parse(&mut out) else {
            panic!("CommandComplete")
        };
        assert_eq!(c.tag().ok(), Some("SHOW"));
        assert!(out.is_empty());
    }
}
