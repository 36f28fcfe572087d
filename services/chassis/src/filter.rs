//! The small expression form rules are written in: enrich drops records with
//! it and feature definitions select events with it, so both read one grammar.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | test
//! test    := FIELD "is" ["not"] "null"
//!          | FIELD ("==" | "!=" | "<" | "<=" | ">" | ">=") LITERAL
//!          | FIELD ["not"] "in" "[" LITERAL ("," LITERAL)* "]"
//! LITERAL := number | 'text' | "text" | true | false
//! ```
//!
//! A comparison with an absent (or null) field is false, so `distance < 0`
//! does not match a record without a distance; ask `distance is null` for that.

use std::fmt;

use millrace_proto::view::ValueRef;

/// A parsed expression, evaluated against a record's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    IsNull(String),
    Compare(String, Op, Literal),
    In(String, Vec<Literal>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// Why an expression did not parse, with the position in the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expression `{source_text}`: {message} at character {position}")]
pub struct ParseError {
    pub source_text: String,
    pub message: String,
    pub position: usize,
}

impl Expr {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            text,
            tokens,
            at: 0,
        };
        let expr = parser.or()?;
        match parser.peek() {
            None => Ok(expr),
            Some(t) => Err(parser.error(format!("unexpected `{}`", t.text))),
        }
    }

    /// Whether the record whose fields `lookup` answers (e.g. event then
    /// joined values) matches; `None` is an absent or null field.
    pub fn eval<'a>(&self, lookup: &dyn Fn(&str) -> Option<ValueRef<'a>>) -> bool {
        match self {
            Expr::IsNull(f) => lookup(f).is_none(),
            Expr::Compare(f, op, lit) => lookup(f).is_some_and(|v| compare(v, *op, lit)),
            Expr::In(f, set) => {
                lookup(f).is_some_and(|v| set.iter().any(|lit| compare(v, Op::Eq, lit)))
            }
            Expr::Not(e) => !e.eval(lookup),
            Expr::And(a, b) => a.eval(lookup) && b.eval(lookup),
            Expr::Or(a, b) => a.eval(lookup) || b.eval(lookup),
        }
    }

    /// Every field the expression reads, for checking it against a schema.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Expr::IsNull(f) | Expr::Compare(f, _, _) | Expr::In(f, _) => vec![f.as_str()],
            Expr::Not(e) => e.fields(),
            Expr::And(a, b) | Expr::Or(a, b) => {
                let mut all = a.fields();
                all.extend(b.fields());
                all
            }
        }
    }
}

fn compare(value: ValueRef<'_>, op: Op, lit: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordering = match (value, lit) {
        (ValueRef::Str(s), Literal::Text(t)) => Some(s.cmp(t.as_str())),
        (ValueRef::Bool(b), Literal::Bool(l)) => Some(b.cmp(l)),
        (ValueRef::Double(x), Literal::Number(n)) => x.partial_cmp(n),
        (ValueRef::Int(i), Literal::Number(n)) => (i as f64).partial_cmp(n),
        (ValueRef::TimestampUs(t), Literal::Number(n)) => (t as f64).partial_cmp(n),
        // Different kinds are never equal and never ordered.
        _ => None,
    };
    match (ordering, op) {
        (None, Op::Ne) => true,
        (None, _) => false,
        (Some(o), Op::Eq) => o == Ordering::Equal,
        (Some(o), Op::Ne) => o != Ordering::Equal,
        (Some(o), Op::Lt) => o == Ordering::Less,
        (Some(o), Op::Le) => o != Ordering::Greater,
        (Some(o), Op::Gt) => o == Ordering::Greater,
        (Some(o), Op::Ge) => o != Ordering::Less,
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Number(n) => write!(f, "{n}"),
            Literal::Text(t) => write!(f, "'{t}'"),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word,
    Number(f64),
    Text(String),
    Symbol,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    text: String,
    position: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let err = |message: String, position: usize| ParseError {
        source_text: text.into(),
        message,
        position,
    };
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut j = i + 1;
            let mut s = String::new();
            while j < chars.len() && chars[j].1 != c {
                s.push(chars[j].1);
                j += 1;
            }
            if j == chars.len() {
                return Err(err("unterminated text".into(), pos));
            }
            tokens.push(Token {
                kind: Tok::Text(s),
                text: text[pos..=chars[j].0].into(),
                position: pos,
            });
            i = j + 1;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|(_, d)| d.is_ascii_digit()))
        {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].1.is_ascii_digit() || matches!(chars[j].1, '.' | 'e' | 'E'))
            {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |(p, _)| *p);
            let raw = &text[pos..end];
            let n: f64 = raw
                .parse()
                .map_err(|_| err(format!("`{raw}` is not a number"), pos))?;
            tokens.push(Token {
                kind: Tok::Number(n),
                text: raw.into(),
                position: pos,
            });
            i = j;
        } else if c.is_alphanumeric() || c == '_' {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].1.is_alphanumeric() || matches!(chars[j].1, '_' | '.' | '-'))
            {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |(p, _)| *p);
            tokens.push(Token {
                kind: Tok::Word,
                text: text[pos..end].into(),
                position: pos,
            });
            i = j;
        } else {
            let two: String = chars[i..chars.len().min(i + 2)]
                .iter()
                .map(|(_, c)| c)
                .collect();
            let symbol = if ["==", "!=", "<=", ">="].contains(&two.as_str()) {
                two
            } else if "<>()[],".contains(c) {
                c.to_string()
            } else {
                return Err(err(format!("unexpected `{c}`"), pos));
            };
            i += symbol.chars().count();
            tokens.push(Token {
                kind: Tok::Symbol,
                text: symbol,
                position: pos,
            });
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn error(&self, message: String) -> ParseError {
        let position = self.peek().map_or(self.text.len(), |t| t.position);
        ParseError {
            source_text: self.text.into(),
            message,
            position,
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        let hit = self
            .peek()
            .is_some_and(|t| t.kind == Tok::Word && t.text.eq_ignore_ascii_case(word));
        if hit {
            self.at += 1;
        }
        hit
    }

    fn symbol(&mut self, s: &str) -> bool {
        let hit = self
            .peek()
            .is_some_and(|t| t.kind == Tok::Symbol && t.text == s);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expect_symbol(&mut self, s: &str) -> Result<(), ParseError> {
        if self.symbol(s) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{s}`")))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.symbol("(") {
            let inner = self.or()?;
            self.expect_symbol(")")?;
            return Ok(inner);
        }
        self.test()
    }

    fn test(&mut self) -> Result<Expr, ParseError> {
        let field = match self.peek() {
            Some(t) if t.kind == Tok::Word && !is_keyword(&t.text) => t.text.clone(),
            _ => return Err(self.error("expected a field name".into())),
        };
        self.at += 1;
        if self.keyword("is") {
            let negated = self.keyword("not");
            if !self.keyword("null") {
                return Err(self.error("expected `null`".into()));
            }
            let test = Expr::IsNull(field);
            return Ok(if negated {
                Expr::Not(Box::new(test))
            } else {
                test
            });
        }
        let negated = self.keyword("not");
        if self.keyword("in") {
            self.expect_symbol("[")?;
            let mut set = vec![self.literal()?];
            while self.symbol(",") {
                set.push(self.literal()?);
            }
            self.expect_symbol("]")?;
            let test = Expr::In(field, set);
            return Ok(if negated {
                Expr::Not(Box::new(test))
            } else {
                test
            });
        }
        if negated {
            return Err(self.error("expected `in` after `not`".into()));
        }
        let op = match self.peek().map(|t| (t.kind.clone(), t.text.as_str())) {
            Some((Tok::Symbol, "==")) => Op::Eq,
            Some((Tok::Symbol, "!=")) => Op::Ne,
            Some((Tok::Symbol, "<")) => Op::Lt,
            Some((Tok::Symbol, "<=")) => Op::Le,
            Some((Tok::Symbol, ">")) => Op::Gt,
            Some((Tok::Symbol, ">=")) => Op::Ge,
            _ => {
                return Err(self.error(format!(
                    "expected a comparison, `in` or `is` after `{field}`"
                )))
            }
        };
        self.at += 1;
        Ok(Expr::Compare(field, op, self.literal()?))
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        let lit = match self.peek() {
            Some(Token {
                kind: Tok::Number(n),
                ..
            }) => Literal::Number(*n),
            Some(Token {
                kind: Tok::Text(s), ..
            }) => Literal::Text(s.clone()),
            Some(t) if t.kind == Tok::Word && t.text.eq_ignore_ascii_case("true") => {
                Literal::Bool(true)
            }
            Some(t) if t.kind == Tok::Word && t.text.eq_ignore_ascii_case("false") => {
                Literal::Bool(false)
            }
            _ => return Err(self.error("expected a number, 'text', true or false".into())),
        };
        self.at += 1;
        Ok(lit)
    }
}

fn is_keyword(word: &str) -> bool {
    ["and", "or", "not", "is", "in", "null"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::Value;
    use std::collections::HashMap;

    fn record() -> HashMap<String, Value> {
        [
            ("origin".to_string(), Value::string("EWR")),
            ("distance".to_string(), Value::double(1400.0)),
            ("hour".to_string(), Value::int(5)),
            ("cancelled".to_string(), Value::bool(false)),
            ("tailnum".to_string(), Value { kind: None }),
        ]
        .into()
    }

    #[test]
    fn expressions_match_as_written() {
        let cases = [
            ("tailnum is null", true),
            ("tailnum is not null", false),
            ("dep_delay is null", true),
            ("origin == 'EWR'", true),
            ("origin != \"EWR\"", false),
            ("distance > 1000", true),
            ("distance <= 1400", true),
            ("distance < 1400", false),
            ("hour >= 5 and hour < 6", true),
            ("hour == 5.0", true),
            ("origin in ['JFK', 'LGA']", false),
            ("origin not in ['JFK', 'LGA']", true),
            ("cancelled == true or distance > 5000", false),
            ("not (cancelled == true or distance > 5000)", true),
            ("missing > 3", false),
            ("not missing > 3", true),
            ("origin == 3", false),
            ("distance == -1", false),
            ("tailnum is null and origin == 'EWR' or hour > 99", true),
        ];
        for (text, expected) in cases {
            let expr = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let fields = record();
            let matches = expr.eval(&|name| fields.get(name).and_then(ValueRef::of));
            assert_eq!(matches, expected, "{text}");
        }
    }

    #[test]
    fn malformed_expressions_say_where() {
        let cases = [
            ("", "expected a field name"),
            ("origin ==", "expected a number"),
            ("origin = 'EWR'", "unexpected `=`"),
            ("origin == 'EWR", "unterminated text"),
            ("(hour > 1", "expected `)`"),
            ("hour > 1 hour", "unexpected `hour`"),
            ("origin not == 1", "expected `in` after `not`"),
            ("origin in ['a' 'b']", "expected `]`"),
            ("tailnum is nothing", "expected `null`"),
        ];
        for (text, expected) in cases {
            let err = Expr::parse(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn fields_lists_what_an_expression_reads() {
        let expr = Expr::parse("a is null or (b > 1 and not c in [1])").expect("parses");
        assert_eq!(expr.fields(), ["a", "b", "c"]);
    }
}
