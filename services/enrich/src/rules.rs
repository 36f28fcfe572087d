//! Filter rules: each drops the events its expression matches, and is named
//! so the DLQ and the metrics say which rule took what.

use millrace_chassis::config::FilterRule;
use millrace_chassis::filter::{Expr, ParseError};
use millrace_proto::view::EventRef;

pub struct Rule {
    pub name: String,
    event: Option<String>,
    drop_when: Expr,
}

#[derive(Default)]
pub struct Filters {
    rules: Vec<Rule>,
}

impl Filters {
    pub fn new(rules: &[FilterRule]) -> Result<Self, ParseError> {
        let rules = rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    name: r.name.clone(),
                    event: r.event.clone(),
                    drop_when: Expr::parse(&r.drop_when)?,
                })
            })
            .collect::<Result<_, ParseError>>()?;
        Ok(Self { rules })
    }

    /// The first rule that drops `event`, in the order the pipeline lists them.
    pub fn dropping(&self, event: EventRef<'_>) -> Option<&Rule> {
        let fields = event.fields();
        self.rules.iter().find(|rule| {
            rule.event.as_ref().is_none_or(|t| *t == event.r#type())
                && rule.drop_when.eval(&|name| fields.get(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::view::EventView;
    use millrace_proto::{Event, Value};

    #[test]
    fn the_first_matching_rule_for_the_type_drops_the_event() {
        let rules = [
            FilterRule {
                name: "no_tailnum".into(),
                event: Some("flight".into()),
                drop_when: "tailnum is null".into(),
            },
            FilterRule {
                name: "bad_distance".into(),
                event: None,
                drop_when: "distance <= 0".into(),
            },
        ];
        let filters = Filters::new(&rules).expect("rules parse");
        let event = |ty: &str, fields: &[(&str, Value)]| Event {
            r#type: ty.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        };
        let cases = [
            (
                "kept",
                event(
                    "flight",
                    &[
                        ("tailnum", Value::string("N1")),
                        ("distance", Value::double(5.0)),
                    ],
                ),
                None,
            ),
            (
                "no tailnum",
                event("flight", &[("distance", Value::double(5.0))]),
                Some("no_tailnum"),
            ),
            (
                "other type keeps its tailnum-less events",
                event("weather", &[]),
                None,
            ),
            (
                "any type with a bad distance",
                event("weather", &[("distance", Value::double(0.0))]),
                Some("bad_distance"),
            ),
            (
                "first rule wins",
                event("flight", &[("distance", Value::double(-1.0))]),
                Some("no_tailnum"),
            ),
        ];
        for (name, e, expected) in cases {
            assert_eq!(
                filters
                    .dropping(EventView::from(&e).event())
                    .map(|r| r.name.clone()),
                expected.map(String::from),
                "{name}"
            );
        }
    }
}
