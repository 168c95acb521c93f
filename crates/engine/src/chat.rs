//! Chat prompts: renders a list of messages with the model's own Jinja chat template (GGUF key
//! `tokenizer.chat_template`) through `minijinja`, configured like Hugging Face's
//! `apply_chat_template` (trim_blocks, lstrip_blocks, `raise_exception`, `bos_token`/`eos_token`).
//! A model without a template gets ChatML ([`CHATML_TEMPLATE`]), the format SmolLM2 and Qwen2.5
//! use.

use serde::{Deserialize, Serialize};

use crate::model::ModelInfo;
use crate::tokenizer::Tokenizer;

/// ChatML, used when the model file has no chat template: every message becomes
/// `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n` when a generation
/// prompt is asked for.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One chat message (OpenAI's `{"role", "content"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// Why a chat prompt could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template has a syntax error, fails while rendering, or raised an exception itself.
    #[error("chat template error: {0}")]
    Template(String),
}

impl ChatError {
    /// A stable, short tag for logs and API error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            ChatError::Template(_) => "chat_template",
        }
    }
}

/// A model's chat template with the special tokens it may reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    source: String,
    is_fallback: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template of the model (ChatML if the file has none), with its BOS/EOS token strings.
    pub fn for_model(info: &ModelInfo, tokenizer: &Tokenizer) -> Self {
        let token_str = |id: Option<u32>| {
            id.and_then(|id| tokenizer.inner().id_to_token(id))
                .unwrap_or_default()
        };
        let bos_token = token_str(info.bos_token_id);
        let eos_token = token_str(info.eos_token_ids.first().copied());
        match &info.chat_template {
            Some(source) if !source.trim().is_empty() => Self {
                source: source.clone(),
                is_fallback: false,
                bos_token,
                eos_token,
            },
            _ => Self {
                is_fallback: true,
                bos_token,
                eos_token,
                ..Self::chatml()
            },
        }
    }

    /// The ChatML fallback.
    pub fn chatml() -> Self {
        Self {
            source: CHATML_TEMPLATE.to_string(),
            is_fallback: true,
            bos_token: String::new(),
            eos_token: "<|im_end|>".to_string(),
        }
    }

    /// A template from Jinja source (tests, or a template supplied by the user).
    pub fn from_source(source: impl Into<String>, bos_token: &str, eos_token: &str) -> Self {
        Self {
            source: source.into(),
            is_fallback: false,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        }
    }

    /// Whether this is the ChatML fallback rather than the model's own template.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply
    /// starts. The result is meant to be encoded without adding special tokens (the template
    /// writes them).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        env.render_str(&self.source, ctx)
            .map_err(|e| ChatError::Template(format!("{e:#}")))
    }
}

impl ChatTemplate {
    /// Renders `(role, content)` turns followed by the cue for the assistant's reply (what a
    /// chat-completions request needs).
    pub fn render_turns(&self, turns: &[(String, String)]) -> Result<String, ChatError> {
        let messages: Vec<ChatMessage> = turns
            .iter()
            .map(|(role, content)| ChatMessage::new(role.as_str(), content.as_str()))
            .collect();
        self.render(&messages, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as stored in its GGUF file.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_fallback_renders_roles_and_generation_prompt() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::user("Hi!"),
        ];
        let text = ChatTemplate::chatml().render(&msgs, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = ChatTemplate::chatml().render(&msgs[1..], false).unwrap();
        assert_eq!(text, "<|im_start|>user\nHi!<|im_end|>\n");
    }

    #[test]
    fn smollm2_template_adds_its_default_system_prompt() {
        let t = ChatTemplate::from_source(SMOLLM2_TEMPLATE, "", "<|im_end|>");
        let text = t
            .render(&[ChatMessage::user("What is 2+2?")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn templates_see_special_tokens_and_can_raise() {
        let t = ChatTemplate::from_source(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ m.content }}{{ eos_token }}{% endfor %}",
            "<s>",
            "</s>",
        );
        assert_eq!(
            t.render(&[ChatMessage::user("a")], false).unwrap(),
            "<s>a</s>"
        );
        let err = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("no tools"), "{err}");
        assert_eq!(err.kind(), "chat_template");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let t = ChatTemplate::from_source("{% for m in messages %}", "", "");
        assert!(matches!(t.render(&[], true), Err(ChatError::Template(_))));
    }

    #[test]
    fn trim_and_lstrip_blocks_match_hugging_face() {
        let t = ChatTemplate::from_source(
            "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}",
            "",
            "",
        );
        assert_eq!(
            t.render(&[ChatMessage::user("x"), ChatMessage::user("y")], false)
                .unwrap(),
            "x\ny\n"
        );
    }
}
