"""`ft eval`: did the fine-tune help? Answer-token loss, task metrics on generations, preference
accuracy and lm-eval benchmarks, for several models side by side (a fine-tune beside its base).

Modules: models (what each MODEL is, loading it) · data (eval records → loss record, prompt,
reference) · loss (log-likelihood of answer tokens) · generation (greedy, batched) · metrics
(names, answer extraction, scoring, GRPO rewards) · harness (lm-eval) · report (table, files,
progress) · run (the straight line).
"""
