"""Plans: the desired stack against the observed hosts, as data.

The planner is a pure function; each change has an action from a closed set, a reason,
field diffs with the policy of each field (one table: `virtplan.plan.policy`), a
destructive mark and its dependencies. Saved plans, drift and the guards that refuse a
plan also live here.
"""
