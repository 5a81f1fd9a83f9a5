//! The sampling fields of an OpenAI request, validated one by one (so an error names the parameter):
//! temperature, top_p, top_k, seed, presence and frequency penalties, logit_bias, and the log-probabilities asked
//! for (chat: `logprobs` + `top_logprobs`; legacy completions: `logprobs` as a count).

use edge_protocol::stage::{Penalties, SamplingParams, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS};
use serde_json::{Map, Value};

use super::openai::{boolean, field, integer, number, out_of_range, wrong_type, ApiError, Endpoint};

/// Everything that decides how a token is picked and what is reported with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub params: SamplingParams,
    pub penalties: Penalties,
    /// Token id (checked against the vocabulary when the request is tokenized) and bias.
    pub logit_bias: Vec<(u32, f32)>,
    /// Alternatives to report with each token's log-probability; None: no log-probabilities.
    pub logprobs: Option<u8>,
}

fn top_count(name: &str, n: i64) -> Result<u8, ApiError> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
        Ok(n as u8)
    } else {
        Err(out_of_range(name, format!("'{name}' must be between 0 and {MAX_TOP_LOGPROBS}, got {n}.")))
    }
}

pub fn parse(endpoint: Endpoint, o: &Map<String, Value>) -> Result<Sampling, ApiError> {
    let temperature = number(o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(out_of_range("temperature", format!("'temperature' must be between 0 and 2, got {temperature}.")));
    }
    let top_p = number(o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(out_of_range("top_p", format!("'top_p' must be greater than 0 and at most 1, got {top_p}.")));
    }
    // Not OpenAI's, but common (llama.cpp, vLLM): 0 disables it.
    let top_k = match integer(o, "top_k")? {
        None => 0,
        Some(k) if (0..=1 << 20).contains(&k) => k as usize,
        Some(k) => return Err(out_of_range("top_k", format!("'top_k' must be between 0 and 1048576, got {k}."))),
    };
    let seed = match field(o, "seed") {
        None => rand::random::<u64>(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64,
            _ => return Err(wrong_type("seed", "an integer", v)),
        },
    };
    let params = SamplingParams { temperature: temperature as f32, top_k, top_p: top_p as f32, seed };
    params.validate().map_err(|e| out_of_range("temperature", e))?;

    let penalty = |name: &str| -> Result<f32, ApiError> {
        let v = number(o, name)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(out_of_range(name, format!("'{name}' must be between -2 and 2, got {v}.")));
        }
        Ok(v as f32)
    };
    let penalties = Penalties { presence: penalty("presence_penalty")?, frequency: penalty("frequency_penalty")? };

    let logit_bias = match field(o, "logit_bias") {
        None => Vec::new(),
        Some(Value::Object(m)) => {
            if m.len() > MAX_LOGIT_BIAS {
                let msg = format!("'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens, got {}.", m.len());
                return Err(out_of_range("logit_bias", msg));
            }
            m.iter()
                .map(|(k, v)| {
                    let id = k.parse::<u32>().map_err(|_| {
                        out_of_range("logit_bias", format!("'logit_bias' keys must be token ids, got {k:?}."))
                    })?;
                    let bias = v.as_f64().ok_or_else(|| wrong_type("logit_bias", "an object of numbers", v))?;
                    if !(-100.0..=100.0).contains(&bias) {
                        let msg = format!("'logit_bias' values must be between -100 and 100, got {bias}.");
                        return Err(out_of_range("logit_bias", msg));
                    }
                    Ok((id, bias as f32))
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(wrong_type("logit_bias", "an object", v)),
    };

    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = boolean(o, "logprobs")?.unwrap_or(false);
            match integer(o, "top_logprobs")? {
                None => on.then_some(0),
                Some(n) => {
                    let n = top_count("top_logprobs", n)?;
                    if !on {
                        return Err(ApiError::invalid("top_logprobs", "'top_logprobs' needs 'logprobs' to be true."));
                    }
                    Some(n)
                }
            }
        }
        Endpoint::Completions => match field(o, "logprobs") {
            None => None,
            Some(v) => Some(top_count("logprobs", v.as_i64().ok_or_else(|| wrong_type("logprobs", "an integer", v))?)?),
        },
    };
    Ok(Sampling { params, penalties, logit_bias, logprobs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(endpoint: Endpoint, body: Value) -> Sampling {
        parse(endpoint, body.as_object().unwrap()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    fn param(endpoint: Endpoint, body: Value) -> Option<String> {
        parse(endpoint, body.as_object().unwrap()).expect_err(&body.to_string()).param
    }

    #[test]
    fn penalties_bias_and_logprobs_are_read() {
        let s = ok(
            Endpoint::Chat,
            json!({"presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"42": -100, "7": 2.5},
                   "logprobs": true, "top_logprobs": 20, "temperature": 0}),
        );
        assert_eq!(s.penalties, Penalties { presence: 0.5, frequency: -1.0 });
        let mut bias = s.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, [(7, 2.5), (42, -100.0)]);
        assert_eq!(s.logprobs, Some(20));
        assert_eq!(ok(Endpoint::Chat, json!({"logprobs": true})).logprobs, Some(0));
        assert_eq!(ok(Endpoint::Chat, json!({"logprobs": false})).logprobs, None);
        assert_eq!(ok(Endpoint::Completions, json!({"logprobs": 0})).logprobs, Some(0));
        assert_eq!(ok(Endpoint::Completions, json!({"logprobs": 5})).logprobs, Some(5));
        assert_eq!(ok(Endpoint::Completions, json!({})).logprobs, None);
        let d = ok(Endpoint::Chat, json!({}));
        assert!(d.penalties.is_none() && d.logit_bias.is_empty());
    }

    #[test]
    fn out_of_range_values_name_the_parameter() {
        let chat = Endpoint::Chat;
        for (body, p) in [
            (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (json!({"logprobs": true, "top_logprobs": -1}), "top_logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"logprobs": 3}), "logprobs"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"frequency_penalty": "x"}), "frequency_penalty"),
            (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"logit_bias": {"5": "1"}}), "logit_bias"),
            (json!({"logit_bias": [1]}), "logit_bias"),
            (json!({"temperature": 3}), "temperature"),
        ] {
            assert_eq!(param(chat, body.clone()).as_deref(), Some(p), "{body}");
        }
        assert_eq!(param(Endpoint::Completions, json!({"logprobs": 21})).as_deref(), Some("logprobs"));
        assert_eq!(param(Endpoint::Completions, json!({"logprobs": true})).as_deref(), Some("logprobs"));
    }
}
