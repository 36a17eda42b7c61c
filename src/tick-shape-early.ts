// Imported first by the CLI, so that the shape of Node's tick objects is held before the modules
// load and their start-up collections run (src/tick-shape.ts), on the V8 versions where the
// problem was reproduced.
import { pinTickObjectShape, tickShapeProblemReproduced } from './tick-shape.js'

if (tickShapeProblemReproduced()) pinTickObjectShape()
