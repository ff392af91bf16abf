pub struct CheckReport;
pub struct Problem;
pub enum ProblemKind {}
