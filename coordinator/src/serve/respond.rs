//! Answering an OpenAI request from its choices' scheduler events: the whole response once every choice has
//! ended, or an SSE stream of chunks (each naming its choice's `index`), then the usage chunk if asked and
//! `[DONE]`. Each choice is a sequence of its own; dropping a receiver (the client went away, or another choice
//! failed) tells the scheduler to cancel that sequence.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::logprobs::{self, Entry};
use super::openai::{self, ApiError, Endpoint, Head, Usage, SSE_DONE};
use super::submit::Event;
use super::tools;
use edge_node::chat_tools::FunctionCall;

/// The log-probabilities of `entries` in the endpoint's shape (completions: their text starts at `offset`).
fn logprobs_json(endpoint: Endpoint, entries: &[Entry], offset: usize) -> Value {
    match endpoint {
        Endpoint::Chat => logprobs::chat(entries),
        Endpoint::Completions => logprobs::completion(entries, offset),
    }
}

/// Sets a response's or chunk's (only) choice's index.
fn set_index(v: &mut Value, index: usize) {
    v["choices"][0]["index"] = index.into();
}

/// One choice, ended.
struct Ended {
    text: String,
    entries: Vec<Entry>,
    calls: Vec<FunctionCall>,
    finish_reason: &'static str,
    completion_tokens: usize,
}

/// One choice to its end: text, log-probabilities, tool calls, finish reason and tokens.
async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Ended, ApiError> {
    let (mut text, mut entries, mut calls) = (String::new(), Vec::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t, lp) => {
                text.push_str(&t);
                entries.extend(lp);
            }
            Event::Call(c) => calls.push(c),
            Event::Done { finish_reason, completion_tokens } => {
                return Ok(Ended { text, entries, calls, finish_reason, completion_tokens })
            }
            Event::Failed(e) => return Err(e),
            Event::Embedding(_) => {} // only embedding requests get one
        }
    }
    Err(ApiError::server("the scheduler stopped"))
}

/// Waits for every choice to end and answers with the whole response (the first failure fails it, and the other
/// choices are cancelled).
pub async fn whole(
    head: Head,
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    prompt_tokens: usize,
    with_logprobs: bool,
) -> Result<Response, ApiError> {
    let ends = futures::future::try_join_all(rxs.into_iter().map(collect)).await?;
    let completion_tokens = ends.iter().map(|e| e.completion_tokens).sum();
    let usage = Usage { prompt_tokens, completion_tokens };
    let choices: Vec<Value> = ends
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut r = head.response(&e.text, e.finish_reason, usage);
            set_index(&mut r, i);
            if with_logprobs {
                Head::set_logprobs(&mut r, logprobs_json(head.endpoint, &e.entries, 0));
            }
            if !e.calls.is_empty() {
                // OpenAI's shape: the calls, and no content unless the model wrote some besides them.
                let message = &mut r["choices"][0]["message"];
                message["tool_calls"] = e.calls.iter().map(|c| tools::call_json(c, &tools::call_id())).collect();
                let content = e.text.trim();
                message["content"] = if content.is_empty() { Value::Null } else { content.into() };
            }
            r["choices"][0].take()
        })
        .collect();
    let mut r = head.response("", "stop", usage);
    r["choices"] = choices.into();
    Ok(Json(r).into_response())
}

/// The events of one choice, tagged with its index; it ends after the choice's last event.
type Tagged = BoxStream<'static, (usize, Option<Event>)>;

fn tagged(index: usize, rx: mpsc::UnboundedReceiver<Event>) -> Tagged {
    futures::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        let ev = rx.recv().await;
        let more = matches!(ev, Some(Event::Text(..) | Event::Call(_)));
        Some(((index, ev), more.then_some(rx)))
    })
    .boxed()
}

struct Streaming {
    head: Head,
    events: SelectAll<Tagged>,
    prompt_tokens: usize,
    include_usage: bool,
    /// Whether the request asked for log-probabilities, and (completions) per choice the characters their tokens
    /// made so far.
    logprobs: bool,
    offsets: Vec<usize>,
    /// Tool calls streamed so far, per choice.
    calls: Vec<usize>,
    /// Choices not yet ended, and the tokens of those that have.
    open: usize,
    completion_tokens: usize,
    started: bool,
    done: bool,
}

/// The SSE stream of a request: a chunk per piece of text of each choice (chat: first a chunk per choice with the
/// assistant role), a chunk with each choice's finish reason, after the last the usage chunk if asked, then
/// `[DONE]`.
pub fn stream(
    head: Head,
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    prompt_tokens: usize,
    include_usage: bool,
    logprobs: bool,
) -> Response {
    let n = rxs.len();
    let state = Streaming {
        head,
        events: futures::stream::select_all(rxs.into_iter().enumerate().map(|(i, rx)| tagged(i, rx))),
        prompt_tokens,
        include_usage,
        logprobs,
        offsets: vec![0; n],
        calls: vec![0; n],
        open: n,
        completion_tokens: 0,
        started: false,
        done: false,
    };
    let body = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let out = if !s.started && s.head.endpoint == Endpoint::Chat {
            s.started = true;
            (0..s.offsets.len())
                .map(|i| {
                    let mut c = s.head.chunk(Some(""), true, None);
                    set_index(&mut c, i);
                    openai::sse(&c)
                })
                .collect()
        } else {
            s.started = true;
            match s.events.next().await {
                Some((i, ev)) => sse_event(&mut s, i, ev),
                None => {
                    s.done = true;
                    openai::sse(&ApiError::server("the scheduler stopped").body()) + SSE_DONE
                }
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(out)), s))
    });
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::server(e.to_string()).into_response())
}

/// The SSE text for one event of choice `i` (the last choice's end also brings the usage chunk and `[DONE]`).
fn sse_event(s: &mut Streaming, i: usize, ev: Option<Event>) -> String {
    match ev {
        Some(Event::Text(t, entries)) => {
            let mut chunk = s.head.chunk(Some(&t), false, None);
            set_index(&mut chunk, i);
            if s.logprobs {
                Head::set_logprobs(&mut chunk, logprobs_json(s.head.endpoint, &entries, s.offsets[i]));
                s.offsets[i] += logprobs::chars(&entries);
            }
            openai::sse(&chunk)
        }
        Some(Event::Call(c)) => {
            // A whole call in one delta (OpenAI streams the arguments in pieces; clients join them either way).
            let mut chunk = s.head.chunk(None, false, None);
            set_index(&mut chunk, i);
            let mut call = tools::call_json(&c, &tools::call_id());
            call["index"] = s.calls[i].into();
            s.calls[i] += 1;
            chunk["choices"][0]["delta"]["tool_calls"] = Value::Array(vec![call]);
            openai::sse(&chunk)
        }
        Some(Event::Done { finish_reason, completion_tokens }) => {
            let mut chunk = s.head.chunk(None, false, Some(finish_reason));
            set_index(&mut chunk, i);
            let mut out = openai::sse(&chunk);
            s.completion_tokens += completion_tokens;
            s.open -= 1;
            if s.open == 0 {
                s.done = true;
                if s.include_usage {
                    let usage = Usage { prompt_tokens: s.prompt_tokens, completion_tokens: s.completion_tokens };
                    out += &openai::sse(&s.head.usage_chunk(usage));
                }
                out += SSE_DONE;
            }
            out
        }
        Some(Event::Failed(e)) => {
            s.done = true;
            openai::sse(&e.body()) + SSE_DONE
        }
        Some(Event::Embedding(_)) => String::new(), // only embedding requests get one
        None => {
            s.done = true;
            openai::sse(&ApiError::server("the scheduler stopped").body()) + SSE_DONE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn streaming(endpoint: Endpoint, include_usage: bool, n: usize) -> Streaming {
        Streaming {
            head: Head::new(endpoint, "m"),
            events: futures::stream::select_all(Vec::<Tagged>::new()),
            prompt_tokens: 4,
            include_usage,
            logprobs: false,
            offsets: vec![0; n],
            calls: vec![0; n],
            open: n,
            completion_tokens: 0,
            started: true,
            done: false,
        }
    }

    fn data(text: &str) -> Vec<Value> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let d = e.strip_prefix("data: ").expect("a data line");
                if d == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn the_end_of_a_stream_is_the_finish_chunk_the_usage_and_done() {
        let mut s = streaming(Endpoint::Chat, true, 1);
        let t = sse_event(&mut s, 0, Some(Event::Text("hi".into(), vec![])));
        assert_eq!(data(&t)[0]["choices"][0]["delta"], json!({"content": "hi"}));
        assert!(!s.done);
        let end = sse_event(&mut s, 0, Some(Event::Done { finish_reason: "length", completion_tokens: 3 }));
        assert!(s.done);
        let d = data(&end);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0]["choices"][0]["finish_reason"], "length");
        assert_eq!(d[1]["usage"], json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}));
        assert_eq!(d[2], "[DONE]");
        assert!(end.ends_with("data: [DONE]\n\n"));

        let mut s = streaming(Endpoint::Completions, false, 1);
        let d = data(&sse_event(&mut s, 0, Some(Event::Done { finish_reason: "stop", completion_tokens: 1 })));
        assert_eq!(d.len(), 2, "no usage chunk unless asked");
        assert_eq!(d[0]["choices"][0]["text"], "");
    }

    #[test]
    fn several_choices_end_after_the_last_with_the_tokens_of_all() {
        let mut s = streaming(Endpoint::Completions, true, 2);
        let d = data(&sse_event(&mut s, 1, Some(Event::Text("b".into(), vec![]))));
        assert_eq!(d[0]["choices"][0]["index"], 1);
        let d = data(&sse_event(&mut s, 1, Some(Event::Done { finish_reason: "stop", completion_tokens: 2 })));
        assert_eq!((d.len(), &d[0]["choices"][0]["index"], s.done), (1, &json!(1), false), "{d:?}");
        let d = data(&sse_event(&mut s, 0, Some(Event::Done { finish_reason: "length", completion_tokens: 5 })));
        assert_eq!(d[0]["choices"][0]["index"], 0);
        assert_eq!(d[1]["usage"]["completion_tokens"], 7);
        assert_eq!(d[2], "[DONE]");
        assert!(s.done);
    }

    #[test]
    fn tool_calls_stream_as_indexed_deltas() {
        let mut s = streaming(Endpoint::Chat, false, 1);
        let call = |name: &str| FunctionCall { name: name.into(), arguments: json!({"a": 1}) };
        for (k, name) in ["f", "g"].into_iter().enumerate() {
            let d = data(&sse_event(&mut s, 0, Some(Event::Call(call(name)))));
            let c = &d[0]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(
                (&c["index"], &c["function"]["name"], &c["function"]["arguments"]),
                (&json!(k), &json!(name), &json!("{\"a\":1}"))
            );
            assert!(c["id"].as_str().unwrap().starts_with("call_"));
        }
    }

    #[test]
    fn a_failure_mid_stream_is_an_error_event_then_done() {
        let mut s = streaming(Endpoint::Completions, true, 2);
        let d = data(&sse_event(&mut s, 1, Some(Event::Failed(ApiError::unavailable("gone")))));
        assert_eq!(d[0]["error"]["code"], "cluster_unavailable");
        assert_eq!(d[1], "[DONE]");
        assert!(s.done);
    }
}
