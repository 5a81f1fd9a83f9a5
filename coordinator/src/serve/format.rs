//! Structured output: a request's `response_format` as the grammar its output must follow. `text` is free text;
//! `json_object` any JSON object (or, as llama.cpp accepts it, the object its `schema` describes); `json_schema`
//! the schema in `json_schema.schema` (OpenAI's shape; `strict` is always honoured: the output is constrained
//! token by token on the stage that samples). Whether the schema compiles is checked before the request is
//! queued ([`check`]): a schema that does not is a 400 with the reason.

use edge_node::grammar::Grammars;
use edge_protocol::stage::{Grammar, MAX_GRAMMAR};
use serde_json::{Map, Value};

use super::openai::{field, wrong_type, ApiError};

/// The grammar of `response_format` (None: free text).
pub fn parse(o: &Map<String, Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(rf) = field(o, "response_format") else { return Ok(None) };
    let Value::Object(rf) = rf else { return Err(wrong_type("response_format", "an object", rf)) };
    let schema = match rf.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => match rf.get("schema") {
            None | Some(Value::Null) => serde_json::json!({"type": "object"}),
            Some(s) => s.clone(),
        },
        Some("json_schema") => match rf.get("json_schema") {
            Some(Value::Object(js)) => match js.get("schema") {
                // No schema: any JSON value.
                None | Some(Value::Null) => serde_json::json!({}),
                Some(s) => s.clone(),
            },
            Some(v) => return Err(wrong_type("response_format.json_schema", "an object", v)),
            None => {
                let msg = "'response_format' of type 'json_schema' needs a 'json_schema' object.";
                return Err(
                    ApiError::invalid("response_format.json_schema", msg).with_code("missing_required_parameter")
                );
            }
        },
        other => {
            let msg = format!("'response_format.type' must be 'text', 'json_object' or 'json_schema', got {other:?}.");
            return Err(ApiError::invalid("response_format.type", msg).with_code("invalid_value"));
        }
    };
    if !schema.is_object() && !schema.is_boolean() {
        return Err(wrong_type("response_format.json_schema.schema", "a JSON schema (an object)", &schema));
    }
    let text = schema.to_string();
    if text.len() > MAX_GRAMMAR {
        let msg = format!("The schema is {} bytes; at most {MAX_GRAMMAR} are accepted.", text.len());
        return Err(ApiError::invalid("response_format", msg).with_code("invalid_value"));
    }
    Ok(Some(Grammar::JsonSchema(text)))
}

/// Whether `g` compiles against the model's vocabulary (`param` is named in the 400 if not).
pub fn check(grammars: &Result<Grammars, String>, g: &Grammar, param: &str) -> Result<(), ApiError> {
    let grammars =
        grammars.as_ref().map_err(|e| ApiError::server(format!("grammars cannot be used with this model: {e}")))?;
    grammars
        .compile(g)
        .map(drop)
        .map_err(|e| ApiError::invalid(param, format!("The schema cannot be used: {e:#}")).with_code("invalid_value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(rf: Value) -> Result<Option<Grammar>, ApiError> {
        parse(json!({"response_format": rf}).as_object().unwrap())
    }

    fn schema(rf: Value) -> Value {
        match parsed(rf).unwrap() {
            Some(Grammar::JsonSchema(s)) => serde_json::from_str(&s).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_shape_becomes_a_schema() {
        assert_eq!(parse(&Map::new()).unwrap(), None);
        assert_eq!(parsed(json!({"type": "text"})).unwrap(), None);
        assert_eq!(schema(json!({"type": "json_object"})), json!({"type": "object"}));
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        assert_eq!(schema(json!({"type": "json_object", "schema": s})), s);
        assert_eq!(
            schema(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": s}})),
            s
        );
        assert_eq!(schema(json!({"type": "json_schema", "json_schema": {"name": "x"}})), json!({}));
    }

    #[test]
    fn malformed_formats_name_their_parameter() {
        for (rf, param) in [
            (json!("json"), "response_format"),
            (json!({"type": "xml"}), "response_format.type"),
            (json!({}), "response_format.type"),
            (json!({"type": "json_schema"}), "response_format.json_schema"),
            (json!({"type": "json_schema", "json_schema": "x"}), "response_format.json_schema"),
            (json!({"type": "json_schema", "json_schema": {"schema": 3}}), "response_format.json_schema.schema"),
            (json!({"type": "json_object", "schema": {"description": "x".repeat(MAX_GRAMMAR)}}), "response_format"),
        ] {
            let e = parsed(rf.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{rf}: {e:?}");
        }
    }
}
