"""Plans: the desired stack against the observed hosts, as data.

- `changes`: what a plan is made of (Action, Reason, FieldChange, ResourceChange, Plan)
  and the one wording of each reason;
- `policy`: the one table of field policies and its refinements (value-dependent
  policies, the action a set of field changes makes, how live fields reach a running
  object, what a change puts at risk);
- `ownership`: which stack owns an observed object;
- `planner`: the pure function desired + observed + records -> Plan;
- `planfile`, `drift`, `protection`: saved plans, changes made outside virtplan, and the
  guards that refuse a plan.
"""
