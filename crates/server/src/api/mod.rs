//! The HTTP API surface: OpenAI wire types ([`openai`]) and the JSON body extractor whose
//! rejections are OpenAI error bodies ([`json`]).

pub mod json;
pub mod openai;
