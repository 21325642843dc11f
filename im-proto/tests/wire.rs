//! The worked bytes of docs/client-protocol.md, byte for byte, and the JSON form it shows.

use im_proto::client::{
    Code, Error, Login, Ping, Request, ServerMessage, request::Command, server_message::Body,
};
use im_proto::codec::frame;
use im_proto::{ChatMessage, MessageKind, SendAck, SendRequest};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

const TIME: i64 = 1_764_392_400_000;

fn push() -> ServerMessage {
    ServerMessage {
        id: 0,
        error: None,
        body: Some(Body::Message(ChatMessage {
            msg_id: 4097,
            conversation_id: "d:1:2".into(),
            seq: 1,
            sender_id: 1,
            client_msg_id: "c-1".into(),
            kind: MessageKind::Text as i32,
            body: "hi".into(),
            server_time_ms: TIME,
            ..ChatMessage::default()
        })),
    }
}

#[test]
fn requests_are_framed_as_documented() {
    let ping = Request {
        id: 1,
        command: Some(Command::Ping(Ping {})),
    };
    assert_eq!(hex(&frame(&ping)), "00 00 00 04 08 01 6a 00");
    let login = Request {
        id: 2,
        command: Some(Command::Login(Login {
            name: "alice".into(),
            password: "secret-pw".into(),
            device_id: "laptop".into(),
            ..Login::default()
        })),
    };
    assert_eq!(
        hex(&frame(&login)),
        "00 00 00 1e 08 02 5a 1a 0a 05 61 6c 69 63 65 12 09 73 65 63 72 65 74 2d 70 77 \
         22 06 6c 61 70 74 6f 70"
    );
    let send = Request {
        id: 3,
        command: Some(Command::Send(SendRequest {
            to_user_id: 2,
            client_msg_id: "c-1".into(),
            body: "hi".into(),
        })),
    };
    assert_eq!(
        hex(&frame(&send)),
        "00 00 00 10 08 03 a2 01 0b 08 02 12 03 63 2d 31 1a 02 68 69"
    );
}

#[test]
fn replies_and_pushes_are_framed_as_documented() {
    let ack = ServerMessage {
        id: 3,
        error: None,
        body: Some(Body::Ack(SendAck {
            msg_id: 4097,
            seq: 1,
            server_time_ms: TIME,
            conversation_id: "d:1:2".into(),
            duplicate: false,
        })),
    };
    assert_eq!(
        hex(&frame(&ack)),
        "00 00 00 17 08 03 7a 13 08 81 20 10 01 18 80 e9 ed ef ac 33 22 05 64 3a 31 3a 32"
    );
    assert_eq!(
        hex(&frame(&push())),
        "00 00 00 23 92 03 20 08 81 20 12 05 64 3a 31 3a 32 18 01 20 01 2a 03 63 2d 31 30 \
         01 3a 02 68 69 48 80 e9 ed ef ac 33"
    );
    let error = ServerMessage {
        id: 5,
        error: Some(Error {
            code: Code::Unauthenticated as i32,
            message: "log in first".into(),
            retryable: false,
        }),
        body: None,
    };
    assert_eq!(
        hex(&frame(&error)),
        "00 00 00 14 08 05 12 10 08 10 12 0c 6c 6f 67 20 69 6e 20 66 69 72 73 74"
    );
}

#[test]
fn json_is_the_protobuf_mapping() {
    let json = serde_json::to_string(&push()).unwrap();
    assert_eq!(
        json,
        r#"{"message":{"msgId":"4097","conversationId":"d:1:2","seq":"1","senderId":"1","clientMsgId":"c-1","kind":"TEXT","body":"hi","serverTimeMs":"1764392400000"}}"#
    );
    let request: Request = serde_json::from_str(
        r#"{"id":"2","send":{"toUserId":"2","clientMsgId":"c-1","body":"hi"}}"#,
    )
    .unwrap();
    assert!(matches!(request.command, Some(Command::Send(ref s)) if s.to_user_id == 2));
    // Proto field names and plain numbers are accepted too.
    let request: Request = serde_json::from_str(r#"{"id":3,"list_conversations":{}}"#).unwrap();
    assert!(matches!(
        request.command,
        Some(Command::ListConversations(_))
    ));
    let error = ServerMessage {
        id: 3,
        error: Some(Error {
            code: Code::Unauthenticated as i32,
            message: "log in first".into(),
            retryable: false,
        }),
        body: None,
    };
    assert_eq!(
        serde_json::to_string(&error).unwrap(),
        r#"{"id":"3","error":{"code":"UNAUTHENTICATED","message":"log in first"}}"#
    );
    assert!(serde_json::from_str::<Request>(r#"{"id":1,"ping":{},"bogus":1}"#).is_err());
}

#[test]
fn json_errors_say_expected_once() {
    let err = serde_json::from_str::<Request>(r#"{"id":"1","login":{"deviceKind":9}}"#)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid value: integer `9`, expected one of: [\"DEVICE_KIND_UNSPECIFIED\", \
         \"DESKTOP\", \"MOBILE\", \"WEB\", \"TERMINAL\"] at line 1 column 33"
    );
    let err = serde_json::from_str::<Request>(r#"{"id":"1","login":{"deviceKind":true}}"#)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid type: boolean `true`, expected one of: [\"DEVICE_KIND_UNSPECIFIED\", \
         \"DESKTOP\", \"MOBILE\", \"WEB\", \"TERMINAL\"] at line 1 column 36"
    );
}
