"""Published MagCache magnitude ratios for Wan2.2 (data, not code).

Source: MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache",
NeurIPS 2025, arXiv:2506.09045), repository Zehong-Ma/MagCache, file
`MagCache4Wan2.2/magcache_generate.py`: the calibrated ratio ||r_t|| / ||r_(t-1)|| of the DiT
residual (blocks' output minus input) between consecutive steps, for the conditional and the
unconditional pass, measured with the official sampler (UniPC, 40 steps, shift 12 for
T2V-A14B; 50 steps, shift 5 for TI2V-5B in text-to-video mode). The first step has no ratio
(1.0). One tuple (cond, uncond) per step from step 1 on. For T2V-A14B one list covers both
experts; its outlier (0.655) is the step where the low-noise expert takes over.
Published defaults: threshold 0.04-0.06, at most K = 2 consecutive skips, retention ratio
0.2-0.4 (the first fraction of each expert's steps is always computed).
"""

T2V_A14B_STEPS = 40
T2V_A14B = (
    (1.00124, 1.00155), (0.99822, 0.99851), (0.99696, 0.99687), (0.99703, 0.99732),
    (0.9966, 0.99679), (0.99602, 0.99658), (0.99578, 0.99664), (0.99484, 0.9949),
    (0.99633, 0.996), (0.99659, 0.99683), (0.99534, 0.99549), (0.99584, 0.99577),
    (0.99681, 0.99694), (0.99563, 0.99554), (0.9944, 0.99473), (0.99594, 0.9964),
    (0.99466, 0.99461), (0.99453, 0.99481), (0.99389, 0.99365), (0.99391, 0.99406),
    (0.99354, 0.99361), (0.99283, 0.99278), (0.99268, 0.99263), (0.99057, 0.99091),
    (0.99125, 0.99126), (0.65523, 0.65252), (0.98808, 0.98852), (0.98765, 0.98736),
    (0.9851, 0.98535), (0.98311, 0.98339), (0.9805, 0.9806), (0.97776, 0.97771),
    (0.97278, 0.97286), (0.96731, 0.96728), (0.95857, 0.95855), (0.94385, 0.94385),
    (0.92118, 0.921), (0.88108, 0.88076), (0.80263, 0.80181),
)

TI2V_5B_STEPS = 50
TI2V_5B = (
    (0.99505, 0.99389), (0.99441, 0.9957), (0.99558, 0.99551), (0.99499, 0.9945),
    (0.99534, 0.99548), (0.99468, 0.9946), (0.99463, 0.99458), (0.9946, 0.99453),
    (0.99408, 0.99404), (0.9945, 0.99441), (0.99409, 0.99398), (0.99403, 0.99397),
    (0.99382, 0.99377), (0.99349, 0.99343), (0.99377, 0.99378), (0.9933, 0.99328),
    (0.99303, 0.99301), (0.99217, 0.99216), (0.992, 0.99201), (0.99201, 0.99202),
    (0.99133, 0.99132), (0.99112, 0.9911), (0.99155, 0.99155), (0.98958, 0.98957),
    (0.98959, 0.98958), (0.98838, 0.98835), (0.98826, 0.98825), (0.9883, 0.98828),
    (0.98711, 0.98709), (0.98562, 0.98561), (0.98511, 0.9851), (0.98414, 0.98412),
    (0.98284, 0.98282), (0.98104, 0.98101), (0.97981, 0.97979), (0.97849, 0.97849),
    (0.97557, 0.97554), (0.97398, 0.97395), (0.97171, 0.97166), (0.96917, 0.96913),
    (0.96511, 0.96507), (0.96263, 0.96257), (0.95839, 0.95835), (0.95483, 0.95475),
    (0.94942, 0.94936), (0.9468, 0.94678), (0.94583, 0.94594), (0.94843, 0.94872),
    (0.96949, 0.97015),
)

# preset name -> (calibrated step count, ratios per step from step 1)
PUBLISHED = {"t2v-A14B": (T2V_A14B_STEPS, T2V_A14B), "ti2v-5B": (TI2V_5B_STEPS, TI2V_5B)}
