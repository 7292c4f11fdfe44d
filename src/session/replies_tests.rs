//! Tests of the reply queue: pairing, synthesized and swallowed replies,
//! errors skipping to Sync, COPY, kept Describe answers.

use super::*;

fn names() -> ServerName {
    super::super::prepared::server_name(b"select 1\0\0\0")
}

#[test]
fn pairs_replies_and_synthesizes_in_order() {
    let mut r = Replies::default();
    let mut out = BytesMut::new();
    // Parse (already prepared: synth), Bind, Execute, Sync
    r.push(Reply::ParseComplete, Mode::Synth, [None, None]);
    assert!(r.emit_ready(&mut out));
    assert_eq!(&out[..], b"1\0\0\0\x04");
    r.push_client_message(b'B', b"B....");
    r.push_client_message(b'E', b"E....");
    r.push_client_message(b'S', b"S....");
    assert_eq!(r.on_server_message(b'2'), Verdict::default());
    assert_eq!(r.on_server_message(b'D'), Verdict::default());
    assert_eq!(r.on_server_message(b'C'), Verdict::default());
    assert!(!r.is_empty());
    r.on_server_message(b'Z');
    assert!(r.is_empty());
}

#[test]
fn only_messages_that_end_nothing_pass_unseen() {
    let mut r = Replies::default();
    r.push_client_message(b'Q', b"Q....");
    assert!(r.passes(b'T') && r.passes(b'D'));
    assert!(!r.passes(b'C') && !r.passes(b'Z') && !r.passes(b'E'));
    // RowDescription ends a Describe; a due proxy reply must go first.
    let mut r = Replies::default();
    r.push_client_message(b'D', b"D\0\0\0\x06P\0");
    assert!(!r.passes(b'T') && r.passes(b'D'));
    r.push(Reply::CloseComplete, Mode::Synth, [None, None]);
    assert!(!r.passes(b'D'));
    // Past a COPY's end the queue holds a marker: rows are looked at.
    let mut r = Replies::default();
    r.push_client_message(b'Q', b"Q....");
    r.push_client_message(b'c', b"c....");
    assert!(!r.passes(b'D'));
}

#[test]
fn swallows_replies_to_injected_messages() {
    let mut r = Replies::default();
    r.push(Reply::ParseComplete, Mode::Swallow, [None, None]);
    r.push_client_message(b'B', b"B....");
    assert!(r.on_server_message(b'1').swallow);
    assert!(!r.on_server_message(b'2').swallow);
}

#[test]
fn an_error_skips_to_sync_and_undoes_effects() {
    let mut r = Replies::default();
    r.push(
        Reply::ParseComplete,
        Mode::Forward,
        [Some(Undo::ServerForget(names())), None],
    );
    r.push(
        Reply::ParseComplete,
        Mode::Synth,
        [Some(Undo::ClientRestore(b"s2".to_vec(), None)), None],
    );
    r.push_client_message(b'Q', b"Q....");
    r.push_client_message(b'S', b"S....");
    let v = r.on_server_message(b'E');
    assert_eq!(v.dropped_queries, 1);
    assert_eq!(r.undo.len(), 2);
    // The synth for the skipped Parse is never emitted.
    assert!(!r.emit_ready(&mut BytesMut::new()));
    r.on_server_message(b'Z');
    assert!(r.is_empty());
}

#[test]
fn error_without_sync_skips_until_the_client_syncs() {
    let mut r = Replies::default();
    r.push_client_message(b'P', b"P....");
    r.push_client_message(b'H', b"H....");
    r.on_server_message(b'E');
    assert!(r.skipping());
    assert!(!r.push_client_message(b'B', b"B...."));
    assert!(!r.push_client_message(b'Q', b"Q...."));
    assert!(r.push_client_message(b'S', b"S...."));
    assert!(!r.skipping());
    r.on_server_message(b'Z');
    assert!(r.is_empty());
}

#[test]
fn errors_inside_simple_queries_wait_for_ready() {
    let mut r = Replies::default();
    r.push_client_message(b'Q', b"Q....");
    r.on_server_message(b'E');
    assert!(!r.is_empty() && !r.skipping());
    r.on_server_message(b'Z');
    assert!(r.is_empty());
}

#[test]
fn syncs_during_copy_in_are_not_answered() {
    // tokio-postgres copy_in: Bind, Execute, Sync, data, CopyDone, Sync
    let mut r = Replies::default();
    r.push_client_message(b'B', b"B....");
    r.push_client_message(b'E', b"E....");
    assert!(r.push_client_message(b'S', b"S...."));
    r.on_server_message(b'2');
    assert_eq!(r.on_server_message(b'G').dropped_queries, 1);
    r.push_client_message(b'd', b"d....");
    r.push_client_message(b'c', b"c....");
    assert!(r.push_client_message(b'S', b"S...."));
    r.on_server_message(b'C');
    r.on_server_message(b'Z');
    assert!(r.is_empty());

    // The whole COPY sent before the server answers.
    let mut r = Replies::default();
    for m in [b'B', b'E', b'S', b'd', b'c', b'S'] {
        r.push_client_message(m, b"x....");
    }
    r.on_server_message(b'2');
    assert_eq!(r.on_server_message(b'G').dropped_queries, 1);
    r.on_server_message(b'C');
    r.on_server_message(b'Z');
    assert!(r.is_empty());

    // CopyFail: error, then the last Sync answers.
    let mut r = Replies::default();
    for m in [b'B', b'E', b'S'] {
        r.push_client_message(m, b"x....");
    }
    r.on_server_message(b'2');
    r.on_server_message(b'G');
    r.push_client_message(b'f', b"f....");
    r.push_client_message(b'S', b"S....");
    r.on_server_message(b'E');
    r.on_server_message(b'Z');
    assert!(r.is_empty());
}

#[test]
fn a_swallowed_describe_hides_both_parts_and_keeps_them() {
    let mut r = Replies::default();
    let name = names();
    r.push(Reply::ParseComplete, Mode::Swallow, [None, None]);
    r.push_captured_describe(name.clone(), Mode::Swallow);
    r.push_client_message(b'S', b"S....");
    assert!(r.on_server_message(b'1').swallow);
    assert!(r.capturing_front());
    r.capture(b't', b"t\0\0\0\x06\0\0");
    assert!(r.on_server_message(b't').swallow);
    r.capture(b'n', b"n\0\0\0\x04");
    assert!(r.on_server_message(b'n').swallow);
    assert!(!r.capturing_front());
    assert!(!r.on_server_message(b'Z').swallow);
    assert!(r.is_empty());
    assert_eq!(r.described.len(), 1);
    assert_eq!(r.described[0].0, name);
    assert_eq!(&r.described[0].1[..], b"t\0\0\0\x06\0\0n\0\0\0\x04");
}

#[test]
fn describe_statement_needs_both_parts() {
    let mut r = Replies::default();
    r.push_client_message(b'D', b"D....S");
    r.on_server_message(b't');
    assert!(!r.is_empty());
    r.on_server_message(b'T');
    assert!(r.is_empty());
}
