"""DE-DSP (Duan et al., 2019): a deep sampler network trained by REINFORCE.

policy.py     masked softmax policies: sample, log-probabilities, entropy
reinforce.py  centred scores (mean / leave-one-out baselines), surrogate
network.py    DeepSamplerNetwork: cheap trunk + triplet and N-pair heads
selection.py  tuples from a candidate pool under the policy
objective.py  embedding loss of pool tuples: θ's loss, sampler's score
algorithm.py  Algorithm 1 as one jitted step
"""

from dmljax.dsp.algorithm import add_sampler_state
from dmljax.dsp.algorithm import make_dsp_step
from dmljax.dsp.network import DeepSamplerNetwork
from dmljax.dsp.reinforce import advantages
from dmljax.dsp.reinforce import reinforce_loss
